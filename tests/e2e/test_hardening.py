"""A hostile client or backend against a live lb, while a normal keep-alive load runs: each
attack gets its refusal, lb's memory stays bounded, and the normal users see no failure."""

import asyncio
import json
import re
import select
import socket
import time

import pytest

from lb.demo.users import Users

from conftest import FakeBackend, Lb, RawClient, read_late_then_answer, steady_load, wait_for, wait_for_requests

RSS_GROWTH_LIMIT_MIB = 16          # what lb may grow by (VmHWM) during one attack


def send_until_closed(port: int, head: bytes, filler: bytes, limit_bytes: int) -> tuple[bytes, int]:
    """Send head, then filler over and over until lb closes or limit_bytes went out.
    Returns (what lb answered, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    try:
        sock.sendall(head)
        while sent < limit_bytes:
            try:
                sock.sendall(filler)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(filler)
        sock.settimeout(5)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        return answer, sent
    finally:
        sock.close()


@pytest.fixture(scope="module")
def lbs(module_backends, tmp_path_factory):
    """One lb per parser over the module's backends, for attacks that leave no trace."""
    made = {impl: Lb(tmp_path_factory.mktemp(impl), [b.config() for b in module_backends], http=impl)
            for impl in ("httptools", "h11")}
    yield made
    for lb in made.values():
        lb.stop()


ATTACKS = [
    ("trailer flood", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
     b"X-T: " + b"a" * 1000 + b"\r\n", 431),
    ("endless trailer line", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ",
     b"a" * 4096, 431),
    ("endless header line", b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ", b"a" * 4096, 431),
    ("endless target", b"GET /", b"a" * 4096, 414),
    ("endless header list", b"GET / HTTP/1.1\r\nHost: a\r\n", b"X-A: 1\r\n" * 64, 431),
]


@pytest.mark.parametrize("impl", ["httptools", "h11"])
@pytest.mark.parametrize("name, head, filler, status", ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_a_flood_is_refused_in_bounded_memory_while_users_see_nothing(lbs, impl, name, head, filler, status):
    lb = lbs[impl]
    before_kib = lb.rss_kib("VmHWM")
    async with steady_load(lb, workers=4) as load:
        await wait_for_requests(load, 50)
        answer, sent = await asyncio.to_thread(send_until_closed, lb.port, head, filler, 50 << 20)
        await wait_for_requests(load, load.requests + 100)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:100]
    assert sent < 50 << 20, "lb kept reading the flood"
    grown_mib = (lb.rss_kib("VmHWM") - before_kib) / 1024
    assert grown_mib < RSS_GROWTH_LIMIT_MIB, grown_mib
    assert load.failures == []


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_five_thousand_pipelined_requests_in_one_write_are_all_answered(lbs, impl):
    lb = lbs[impl]
    before_kib = lb.rss_kib("VmHWM")
    with RawClient(lb.port, timeout_s=30) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 5000)
        statuses = [client.response().status for _ in range(5000)]
    assert statuses == [200] * 5000
    assert (lb.rss_kib("VmHWM") - before_kib) / 1024 < RSS_GROWTH_LIMIT_MIB


@pytest.mark.parametrize("impl", ["httptools", "h11"])
@pytest.mark.parametrize("count, target, status", [(101, 1, 431), (99, 1, 200), (1, 8193, 414), (1, 8000, 200)])
def test_header_count_and_target_limits(lbs, impl, count, target, status):
    lb = lbs[impl]
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(count - 1))
    with RawClient(lb.port) as client:
        client.send(b"GET /" + b"a" * (target - 1) + b" HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
        assert client.response().status == status


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_a_response_head_too_big_is_502_and_the_connection_is_not_reused(spawn, tmp_path, impl):
    big = b"HTTP/1.1 200 OK\r\n" + b"X-A: 0123456789\r\n" * 5000 + b"Content-Length: 2\r\n\r\nok"
    fake = FakeBackend(lambda conn, head: conn.sendall(big))
    try:
        lb = spawn(Lb, tmp_path, [{"name": "fake", "address": fake.address}], http=impl,
                   passive={"failures": 0}, health={"interval": "30s"})
        before_kib = lb.rss_kib("VmHWM")
        for _ in range(3):
            with RawClient(lb.port) as client:
                client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                assert client.response().status == 502
        assert len(fake.requests) == 3
        assert (lb.rss_kib("VmHWM") - before_kib) / 1024 < RSS_GROWTH_LIMIT_MIB
        entry = wait_for(lambda: lb.access_lines(), 5, "access log")[0]
        assert entry["error"] == "bad response from backend"
    finally:
        fake.stop()


def test_slowloris_is_cut_by_the_header_deadline(spawn, tmp_path, module_backends):
    lb = spawn(Lb, tmp_path, [b.config() for b in module_backends],
               timeouts={"client_header": "1s"})
    sock = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
    try:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        answer, ended = b"", False
        while not ended and time.monotonic() - started < 5:
            sock.sendall(b"X")                          # a header byte every 200 ms
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                while piece := sock.recv(4096):
                    answer += piece
                ended = True                            # lb's half-close after its answer
            except BlockingIOError:
                pass
            sock.setblocking(True)
        assert ended and answer.startswith(b"HTTP/1.1 408 "), answer   # within 5 s of trickling
    finally:
        sock.close()


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_an_answer_given_while_the_client_still_sends_is_read_not_reset(spawn, tmp_path, module_backends, impl):
    """lb answers 431 with most of an oversized head still unread: it half-closes and drops
    the rest (a lingering close), so the client's sending meets no reset and it reads the
    431. Closing at once makes the kernel reset the connection (unread data), which fails
    the client's send and can discard the answer before it is read."""
    lb = spawn(Lb, tmp_path, [b.config() for b in module_backends], http=impl)
    sock = socket.create_connection(("127.0.0.1", lb.port), timeout=10)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (512 * 1024))
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), answer
        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
        assert length and len(body) == int(length[1]), answer     # the whole answer
    finally:
        sock.close()
    entry = wait_for(lambda: lb.access_lines(), 5, "access log")[0]
    assert entry["status"] == 431


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_a_body_ended_by_the_backends_close_is_rechunked_and_ended_for_a_1_1_client(spawn, tmp_path, impl):
    fake = FakeBackend(lambda conn, head: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                                       b"Connection: close\r\n\r\nhello world"))
    try:
        lb = spawn(Lb, tmp_path, [{"name": "fake", "address": fake.address}], http=impl,
                   health={"interval": "30s"})
        with RawClient(lb.port) as client:
            for _ in range(2):                    # the client connection stays usable
                client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                resp = client.response()
                assert resp.status == 200 and resp.body == b"hello world"
                assert resp.getheader("Transfer-Encoding") == "chunked"
        with RawClient(lb.port) as client:        # an HTTP/1.0 client: delimited by closing
            client.send(b"GET / HTTP/1.0\r\n\r\n")
            resp = client.response()
            assert resp.body == b"hello world" and client.closed_by_peer()
    finally:
        fake.stop()


@pytest.mark.parametrize("impl", ["httptools", "h11"])
@pytest.mark.parametrize("half_sent", [b"GET / HTTP/1.1\r\nHo", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"])
def test_a_408_for_a_half_sent_pipelined_request_waits_for_the_response_before_it(spawn, tmp_path, module_backends,
                                                                                   impl, half_sent):
    lb = spawn(Lb, tmp_path, [module_backends[0].config()], http=impl,
               timeouts={"client_header": "300ms", "client_idle": "300ms"})
    with RawClient(lb.port) as client:
        # a response that streams for ~1.5 s, and the next request, half sent, right behind it
        client.send(b"GET /stream?chunks=6&ms=250 HTTP/1.1\r\nHost: a\r\n\r\n" + half_sent)
        first = client.response()
        assert first.status == 200 and first.body.count(b"chunk") == 6, first.body
        second = client.response()
        assert second.status == 408
        assert client.closed_by_peer()


WS_UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
MASK = b"\x01\x02\x03\x04"


def ws_text(payload: bytes) -> bytes:
    """A masked client text frame (payload under 126 bytes)."""
    return b"\x81" + bytes([0x80 | len(payload)]) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_an_idle_tunnel_times_out_with_close_1001_and_a_busy_one_does_not(spawn, tmp_path, module_backends, impl):
    lb = spawn(Lb, tmp_path, [module_backends[0].config()], http=impl, timeouts={"tunnel": "2s"})
    with RawClient(lb.port) as busy, RawClient(lb.port) as idle:
        for client in (busy, idle):
            client.send(WS_UPGRADE)
            assert client.head_lines()[0].startswith(b"HTTP/1.1 101")
        started = time.monotonic()
        while time.monotonic() - started < 3.5:      # traffic every 0.3 s keeps `busy` open
            busy.send(ws_text(b"ping"))
            assert busy._file.read(6)[2:] == b"ping"  # the echo, unmasked: 0x81 0x04 ping
            time.sleep(0.3)
        assert idle._file.read(4) == b"\x88\x02\x03\xe9"    # close, 1001: going away
        assert idle.closed_by_peer()
        busy.send(ws_text(b"still"))
        assert busy._file.read(7)[2:] == b"still"
    failed = lb.ctl("show stats")["stats"]["totals"]["failed"]
    assert failed.get("tunnel_timeout") == 1


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_a_body_trickled_below_the_minimum_rate_is_408_and_frees_the_backend(spawn, tmp_path, module_backends, impl):
    lb = spawn(Lb, tmp_path, [module_backends[0].config()], http=impl,
               timeouts={"client_idle": "1s"}, limits={"min_body_rate": "1KiB/s"})
    with RawClient(lb.port) as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
        started = time.monotonic()
        answered = False
        while time.monotonic() - started < 10 and not answered:
            try:
                client.send(b"x")                      # a byte every 0.2 s: never idle, far too slow
            except OSError:
                break
            time.sleep(0.2)
            answered = bool(select_readable(client.sock))
        resp = client.response()
        assert resp.status == 408
    wait_for(lambda: lb.server("web1")["inflight"] == 0, 5, "the backend's request to end")


def test_a_body_that_the_backend_is_slow_to_take_is_not_blamed_on_the_client(spawn, tmp_path):
    """lb stops reading the client while its backend does not take the body: that is no
    reason for a 408, whatever client_idle and min_body_rate say."""
    fake = FakeBackend()
    fake.behaviour = lambda conn, head: read_late_then_answer(conn, head, len(fake.rest))
    try:
        lb = spawn(Lb, tmp_path, [{"name": "slow", "address": fake.address}],
                   timeouts={"client_idle": "1s"}, limits={"min_body_rate": "1KiB/s"})
        size = 64 << 20                              # far more than the socket buffers on the way
        with RawClient(lb.port, timeout_s=30) as client:
            client.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size + bytes(size))
            resp = client.response()
            assert resp.status == 200 and resp.body == b"%d" % size
    finally:
        fake.stop()


def select_readable(sock) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


SPOOFING = (b"GET /echo HTTP/1.1\r\nHost: front.example\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n"
            b"X-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /evil\r\n\r\n")


@pytest.mark.parametrize("impl", ["httptools", "h11"])
@pytest.mark.parametrize("trusted, xff, forwarded, logged", [
    ([], "127.0.0.1", "for=127.0.0.1;host=front.example;proto=http", "127.0.0.1"),
    (["127.0.0.0/8"], "6.6.6.6, 127.0.0.1", "for=6.6.6.6, for=127.0.0.1;host=front.example;proto=http",
     "6.6.6.6"),
])
def test_forwarding_headers_come_from_lb_unless_the_peer_is_trusted(spawn, tmp_path, module_backends, impl,
                                                                    trusted, xff, forwarded, logged):
    lb = spawn(Lb, tmp_path, [module_backends[0].config()], http=impl, trusted_proxies=trusted)
    with RawClient(lb.port) as client:
        client.send(SPOOFING)
        echo = json.loads(client.response().body)
    headers = {}
    for name, value in echo["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    assert headers["x-forwarded-for"] == [xff] and headers["forwarded"] == [forwarded]
    assert not {"x-real-ip", "x-forwarded-port", "x-forwarded-prefix"} & set(headers)
    entry = wait_for(lambda: lb.access_lines(), 5, "access log")[0]
    assert entry["client"] == logged


@pytest.mark.parametrize("impl", ["httptools", "h11"])
@pytest.mark.parametrize("request_line, host", [
    (b"GET http://other.example/ HTTP/1.1", b"front.example"),
    (b"GET / HTTP/1.1", b"front example"),
    (b"GET @evil/x HTTP/1.1", b"front.example"),
])
def test_a_target_or_host_that_disagrees_is_400(lbs, impl, request_line, host):
    with RawClient(lbs[impl].port) as client:
        client.send(request_line + b"\r\nHost: " + host + b"\r\n\r\n")
        assert client.response().status == 400


@pytest.mark.parametrize("impl", ["httptools", "h11"])
async def test_max_conns_caps_a_backend_and_the_rest_wait_then_succeed(spawn, tmp_path, module_backends, impl):
    web1 = module_backends[0]
    lb = spawn(Lb, tmp_path, [web1.config(max_conns=2)], http=impl)
    seen_inflight, seen_queued = [], []

    def watch():
        servers = lb.ctl("show servers")
        seen_inflight.append(servers["servers"][0]["inflight"])
        seen_queued.append(servers["queued"])

    async with Users("127.0.0.1", lb.port, slots=8, life=None, think_s=0, path="/slow?ms=100",
                     keep_cookie=False) as load:
        await wait_for_requests(load, 5)
        for _ in range(10):
            await asyncio.to_thread(watch)
        await wait_for_requests(load, 60)
    assert load.failures == []
    assert max(seen_inflight) <= 2 and max(seen_queued) >= 1, (seen_inflight, seen_queued)
    assert lb.server("web1")["max_conns"] == 2


def test_a_request_that_waits_longer_than_the_queue_timeout_is_503(spawn, tmp_path, module_backends):
    # One worker: with N workers a cap is shared out, each worker at least 1 (see docs/architecture.md, "Master and workers").
    lb = spawn(Lb, tmp_path, [module_backends[0].config(max_conns=1)], timeouts={"queue": "300ms"}, workers=1)
    with RawClient(lb.port) as busy, RawClient(lb.port) as waiting:
        busy.send(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_for(lambda: lb.server("web1")["inflight"] == 1, 5, "the first request in flight")
        waiting.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert waiting.response().status == 503
        assert busy.response().status == 200
    entry = wait_for(lambda: [e for e in lb.access_lines() if e["status"] == 503], 5, "the 503's line")[0]
    assert entry["error"] == "no backend slot free in time (timeouts.queue)"


def test_set_maxconn_at_run_time(spawn, tmp_path, module_backends):
    lb = spawn(Lb, tmp_path, [module_backends[0].config()])
    reply = lb.ctl("set maxconn web1 3")
    assert reply["ok"] and reply["server"]["max_conns"] == 3
    bad = lb.ctl("set maxconn web1 lots")
    assert not bad["ok"] and bad["error"].startswith("'set maxconn' expects a whole number")
    lb.restart()
    assert lb.server("web1")["max_conns"] == 3          # kept by the state file


PER_SLOW_READER_LIMIT_KIB = 128     # measured ~66 KiB (a 32 KiB write buffer and one 32 KiB read)


async def test_slow_readers_cost_a_bounded_amount_each_and_do_not_stop_others(spawn, tmp_path, module_backends):
    lb = spawn(Lb, tmp_path, [module_backends[0].config()], access_log="off")
    readers = []
    async with steady_load(lb, workers=4) as load:
        await wait_for_requests(load, 50)
        before_kib = lb.rss_kib()
        for _ in range(100):                 # each asks for 64 MiB and reads nothing
            sock = socket.create_connection(("127.0.0.1", lb.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /bytes?n=67108864 HTTP/1.1\r\nHost: a\r\n\r\n")
            readers.append(sock)
        wait_for(lambda: lb.server("web1")["inflight"] >= 100, 10, "100 responses in flight")
        count = load.requests
        await wait_for_requests(load, count + 200)    # the others are served meanwhile
        per_reader_kib = (lb.rss_kib() - before_kib) / 100
    for sock in readers:
        sock.close()
    assert load.failures == []
    assert per_reader_kib < PER_SLOW_READER_LIMIT_KIB, per_reader_kib
