"""HTTP/2 from clients (ALPN h2 on a TLS listener): real lb processes and backends, an h2
client (tests/e2e/h2_client.py, the h2 library over an ssl socket) and curl."""

import json
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time

import h2.errors
import pytest
import trustme
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

from conftest import Lb, client_context, wait_for, write_cert
from h2_client import H2Client

PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def h2_lb(spawn, tmp_path, module_backends, ca):
    return spawn(Lb, tmp_path, [b.config() for b in module_backends],
                 tls={"certs": [write_cert(ca, tmp_path, "main", "lb.example", "127.0.0.1")]})


def body_json(client: H2Client, sid: int) -> dict:
    return json.loads(bytes(client.responses[sid]["body"]))


def test_many_streams_on_one_connection_reach_several_backends_and_keep_their_pin(h2_lb, ca):
    client = H2Client(h2_lb.port, client_context(ca))
    try:
        sids = [client.request("/") for _ in range(60)]          # 60 at once on one connection
        client.wait(sids)
        assert {client.status(s) for s in sids} == {200}
        assert len({body_json(client, s)["node"] for s in sids}) == 3
        cookie = client.header(sids[0], b"set-cookie")[0].split(b";")[0]
        assert cookie.startswith(b"lb_version=")
        # the pin comes back in a cookie field HTTP/2 split in two (RFC 9113 8.2.3)
        pinned = client.request("/echo", headers=[(b"cookie", b"a=1"), (b"cookie", cookie)])
        client.wait([pinned])
        assert client.status(pinned) == 200 and client.header(pinned, b"set-cookie") == []
        sent = {name.lower(): value for name, value in body_json(client, pinned)["headers"]}
        assert sent["cookie"] == "a=1; " + cookie.decode() and sent["host"] == "lb.example"
        assert sent["x-forwarded-proto"] == "https" and sent["via"] == "2 lb"
    finally:
        client.close()
    lines = wait_for(lambda: h2_lb.access_lines()[60:], 5, "access lines")
    assert lines[0]["tls"]["version"] == "TLSv1.3" and lines[0]["status"] == 200


def test_large_uploads_and_downloads_keep_to_flow_control_in_bounded_memory(h2_lb, ca):
    size = 100 << 20
    client = H2Client(h2_lb.port, client_context(ca), timeout_s=60)
    try:
        before_kib = h2_lb.rss_kib("VmHWM")
        down = client.request(f"/bytes?n={size}")
        client.responses[down]["keep"] = False                   # count it, do not keep it
        client.wait([down])
        assert client.status(down) == 200 and client.received_bytes == size
        up = client.request("/sink", method="POST", headers=[(b"content-length", str(size).encode())],
                            body=bytes(size))
        client.wait([up])
        assert client.status(up) == 200 and body_json(client, up)["bytes"] == size
        grown_mib = (h2_lb.rss_kib("VmHWM") - before_kib) / 1024
        assert grown_mib < 8, grown_mib
    finally:
        client.close()


def test_a_stream_the_client_does_not_read_stalls_alone_in_bounded_memory(h2_lb, ca):
    client = H2Client(h2_lb.port, client_context(ca))
    try:
        before_kib = h2_lb.rss_kib("VmHWM")
        stalled = client.request(f"/bytes?n={50 << 20}")
        client.responses[stalled]["stalled"] = True
        client.responses[stalled]["keep"] = False
        others = [client.request("/") for _ in range(20)]      # the same connection goes on
        client.wait(others)
        assert {client.status(s) for s in others} == {200}
        assert stalled not in client.ended and client.received_bytes < 1 << 20
        more = [client.request("/echo") for _ in range(20)]
        client.wait(more)
        assert {client.status(s) for s in more} == {200} and stalled not in client.ended
        assert (h2_lb.rss_kib("VmHWM") - before_kib) / 1024 < 8   # not the 50 MiB the backend has to send
    finally:
        client.close()


@pytest.mark.parametrize("name, fields", [
    ("uppercase name", [(b"X-Upper", b"1")]),
    ("connection-specific", [(b"connection", b"keep-alive")]),
    ("transfer-encoding", [(b"transfer-encoding", b"chunked")]),
    ("te other than trailers", [(b"te", b"gzip")]),
    ("CR in a value", [(b"x-a", b"1\r\nx-injected: 1")]),
    ("NUL in a value", [(b"x-a", b"1\x00")]),
    ("pseudo-header after a regular one", "late-pseudo"),
    ("missing :path", "no-path"),
    ("unknown pseudo-header", [(b":protocol", b"websocket")]),
])
def test_a_malformed_request_is_a_stream_error_and_never_forwarded(h2_lb, ca, module_backends, name, fields):
    base = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"lb.example"), (b":path", b"/echo")]
    if fields == "late-pseudo":
        request = [base[0], base[1], (b"x-a", b"1"), base[2], base[3]]
    elif fields == "no-path":
        request = base[:3]
    elif fields[0][0].startswith(b":"):
        request = [*base[:3], fields[0], base[3]]
    else:
        request = base + fields
    client = H2Client(h2_lb.port, client_context(ca))
    try:
        bad = client.request("/echo", fields=request)
        client.wait([bad])
        assert client.resets.get(bad) == PROTOCOL_ERROR, (client.resets, client.responses[bad])
        good = client.request("/")                           # the connection goes on
        client.wait([good])
        assert client.status(good) == 200
    finally:
        client.close()


def test_a_content_length_that_the_data_does_not_match_resets_the_stream(h2_lb, ca):
    client = H2Client(h2_lb.port, client_context(ca))
    try:
        short = client.request("/sink", method="POST", headers=[(b"content-length", b"10")], body=b"12345")
        long = client.request("/sink", method="POST", headers=[(b"content-length", b"3")], body=b"123456")
        client.wait([short, long])
        assert client.resets.get(short) == PROTOCOL_ERROR and client.resets.get(long) == PROTOCOL_ERROR
        good = client.request("/")
        client.wait([good])
        assert client.status(good) == 200
    finally:
        client.close()


def _raw_h2(port: int, ca, frames: bytes) -> tuple[int | None, bytes]:
    """Send the preface, SETTINGS and `frames` over TLS; return the GOAWAY error code lb sent
    (None if it sent none before closing) and everything it sent."""
    context = client_context(ca)
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="lb.example")
    received = b""
    try:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize() + frames)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, OSError):
                break
            if not data:
                break
            received += data
    finally:
        sock.close()
    at = 0
    while at + 9 <= len(received):
        length = int.from_bytes(received[at:at + 3], "big")
        kind = received[at + 3]
        if kind == 0x7:                                  # GOAWAY
            return int.from_bytes(received[at + 13:at + 17], "big"), received
        at += 9 + length
    return None, received


def _headers_block(stream_id: int) -> bytes:
    import hpack
    return hpack.Encoder().encode([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"lb.example"),
                                   (b":path", b"/slow?ms=2000")])


def test_a_stream_past_the_concurrency_limit_is_refused_and_the_connection_goes_on(h2_lb, ca):
    """RFC 9113 5.1.2: a stream error (REFUSED_STREAM, which a client may retry), not GOAWAY."""
    client = H2Client(h2_lb.port, client_context(ca))
    try:
        # Sent before lb's SETTINGS are read, so the client's own h2 does not hold it to 100.
        base = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"lb.example"), (b":path", b"/sink"),
                (b"content-length", b"2")]
        sids = []
        for _ in range(101):                    # 100 open streams waiting for their bodies, and one more
            sid = client.conn.get_next_available_stream_id()
            client.responses[sid] = {"headers": None, "body": bytearray(), "keep": True}
            client.conn.send_headers(sid, base, end_stream=False)
            sids.append(sid)
        client.sock.sendall(client.conn.data_to_send())
        client.wait([sids[-1]])
        assert client.resets == {sids[-1]: h2.errors.ErrorCodes.REFUSED_STREAM}
        for sid in sids[:-1]:
            client.send_body(sid, b"ok")
        client.wait(sids[:-1])
        assert {client.status(s) for s in sids[:-1]} == {200} and client.goaway is None
        again = client.request("/")
        client.wait([again])
        assert client.status(again) == 200
    finally:
        client.close()


def test_a_request_body_trickled_below_the_minimum_rate_gets_408_on_its_stream_alone(spawn, tmp_path,
                                                                                      module_backends, ca):
    lb = spawn(Lb, tmp_path, [module_backends[0].config()], timeouts={"client_idle": "1s"},
               limits={"min_body_rate": "1KiB/s"},
               tls={"certs": [write_cert(ca, tmp_path, "main", "lb.example", "127.0.0.1")]})
    client = H2Client(lb.port, client_context(ca))
    try:
        sid = client.conn.get_next_available_stream_id()
        client.responses[sid] = {"headers": None, "body": bytearray(), "keep": True}
        client.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"lb.example"),
                                       (b":path", b"/echo"), (b"content-length", b"1000000")], end_stream=False)
        client.sock.sendall(client.conn.data_to_send())
        started = time.monotonic()
        while sid not in client.ended and sid not in client.resets and time.monotonic() - started < 10:
            client.conn.send_data(sid, b"x")                 # a byte every 0.2 s: never idle, far too slow
            client.sock.sendall(client.conn.data_to_send())
            time.sleep(0.2)
            while client.sock.pending() or select.select([client.sock], [], [], 0)[0]:
                client.pump()
        assert client.status(sid) == 408
        other = client.request("/")                          # the connection goes on
        client.wait([other])
        assert client.status(other) == 200
        # after the whole response, RST_STREAM NO_ERROR tells the client to stop sending (RFC 9113 8.1)
        assert client.resets.get(sid) == h2.errors.ErrorCodes.NO_ERROR
    finally:
        client.close()
    wait_for(lambda: lb.server("web1")["inflight"] == 0, 5, "the backend's request to end")


def test_rapid_reset_gets_goaway_enhance_your_calm(h2_lb, ca):
    """Past 100 resets in a second the connection is not read for the rest of it; the third
    time, GOAWAY."""
    from hyperframe.frame import RstStreamFrame
    frames = b""
    for i in range(400):                                  # the 2023 attack: open, reset, at once
        sid = 1 + 2 * i
        frames += HeadersFrame(sid, data=_headers_block(sid), flags=["END_HEADERS", "END_STREAM"]).serialize()
        frames += RstStreamFrame(sid, error_code=8).serialize()
    code, _ = _raw_h2(h2_lb.port, ca, frames)
    assert code == ENHANCE_YOUR_CALM


def test_ping_and_settings_floods_get_goaway_enhance_your_calm(h2_lb, ca):
    """50 a second each; held back twice (not read for the rest of a second), GOAWAY the third time."""
    pings = b"".join(PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize() for i in range(200))
    assert _raw_h2(h2_lb.port, ca, pings)[0] == ENHANCE_YOUR_CALM
    settings = b"".join(SettingsFrame(0, settings={0x4: 65535 + i}).serialize() for i in range(200))
    assert _raw_h2(h2_lb.port, ca, settings)[0] == ENHANCE_YOUR_CALM


def test_a_continuation_flood_is_a_connection_error(h2_lb, ca):
    """The 2024 CONTINUATION flood: a header block that never ends is cut, in bounded memory."""
    before_kib = h2_lb.rss_kib("VmHWM")
    frames = HeadersFrame(1, data=b"").serialize()          # no END_HEADERS
    frames += b"".join(ContinuationFrame(1, data=b"\x00" * 1000).serialize() for _ in range(2000))
    code, _ = _raw_h2(h2_lb.port, ca, frames)
    assert code is not None and code != 0
    assert (h2_lb.rss_kib("VmHWM") - before_kib) / 1024 < 8


def test_goaway_on_stop_lets_the_streams_in_flight_finish(spawn, tmp_path, module_backends, ca):
    lb = spawn(Lb, tmp_path, [b.config() for b in module_backends],
               tls={"certs": [write_cert(ca, tmp_path, "main", "lb.example")]})
    client = H2Client(lb.port, client_context(ca))
    try:
        slow = [client.request("/slow?ms=800") for _ in range(3)]
        wait_for(lambda: sum(s["inflight"] for s in lb.ctl("show servers")["servers"]) == 3, 10,
                 "the three requests to reach the backends")
        stopping = threading.Thread(target=lb.stop)
        stopping.start()
        client.wait_goaway()
        assert client.goaway.last_stream_id >= max(slow) and client.goaway.error_code == 0
        client.wait(slow)
        assert {client.status(s) for s in slow} == {200}
        with pytest.raises((EOFError, ConnectionResetError, ssl.SSLError)):
            while True:                       # then lb closes the connection
                client.pump()
        client.close()
        stopping.join(30)
        assert not stopping.is_alive() and lb.proc.returncode == 0
    finally:
        client.close()


def test_a_drain_under_h2_load_fails_no_stream(h2_lb, ca):
    failures, served, stop = [], [], threading.Event()

    def load() -> None:
        client = H2Client(h2_lb.port, client_context(ca))
        try:
            while not stop.is_set():
                started = time.monotonic()
                sids = [client.request("/") for _ in range(10)]
                client.wait(sids)
                for sid in sids:
                    if sid in client.resets or client.status(sid) != 200:
                        failures.append((sid, client.resets.get(sid)))
                    else:
                        served.append((started, body_json(client, sid)["node"]))
        except Exception as exc:  # recorded, then asserted on below
            failures.append(repr(exc))
        finally:
            client.close()

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(served) > 100, 20, "h2 load")
        assert h2_lb.ctl("drain web1")["ok"]
        assert h2_lb.ctl("wait web1 drained 20")["ok"]
        drained_at = time.monotonic()
        wait_for(lambda: sum(1 for at, _ in served if at > drained_at) > 100, 20, "h2 load after the drain")
        # streams opened after the drain went elsewhere (routing is per stream)
        assert "web1" not in {node for at, node in list(served) if at > drained_at}
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []


@pytest.mark.parametrize("split", [0, 5])
def test_http2_with_prior_knowledge_on_a_plain_listener_beside_http_1_1(spawn, tmp_path, module_backends, split):
    from conftest import RawClient
    lb = spawn(Lb, tmp_path, [b.config() for b in module_backends], http2=True)
    plain = lb.port
    client = H2Client(plain, None, preface_split=split)
    try:
        sids = [client.request("/echo", authority=f"127.0.0.1:{plain}") for _ in range(10)]
        client.wait(sids)
        assert {client.status(s) for s in sids} == {200}
        sent = {name.lower(): value for name, value in body_json(client, sids[0])["headers"]}
        assert sent["x-forwarded-proto"] == "http"
    finally:
        client.close()
    with RawClient(plain) as http1:                         # HTTP/1.1 on the same listener
        http1.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert http1.response().status == 200


def test_curl_speaks_http2_to_the_tls_listener(h2_lb, ca, tmp_path):
    curl = shutil.which("curl")
    if curl is None or "HTTP2" not in subprocess.run([curl, "--version"], capture_output=True, text=True).stdout:
        pytest.skip("curl with HTTP/2 is not installed")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    done = subprocess.run([curl, "-sS", "--http2", "--cacert", str(ca_file), "-o", "/dev/null", "-w",
                           "%{http_version} %{http_code}", f"https://127.0.0.1:{h2_lb.port}/"],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout == "2 200", done.stdout + done.stderr
