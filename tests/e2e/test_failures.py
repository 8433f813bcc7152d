"""What lb does when backends, clients or the clock misbehave. Each test runs its own lb."""

import json
import signal
import socket
import time

import pytest

from lb.demo.users import Users

from conftest import Backend, FakeBackend, Lb, RawClient, free_port, get, port_open, wait_for, wait_for_requests

FAST_TIMEOUTS = {"connect": "300ms", "client_header": "500ms", "client_idle": "500ms",
                 "upstream_first_byte": "500ms", "upstream_idle": "2s"}


def test_no_backend_available_is_503(spawn, tmp_path, http_impl):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config(weight=0)], http=http_impl)
    resp = get(lb.port, "/")
    assert resp.status == 503 and resp.body == b"503 Service Unavailable\n"
    assert resp.getheader("Content-Type").startswith("text/plain")
    entry = wait_for(lambda: lb.access_lines(), 5, "access log")[0]
    assert entry["status"] == 503 and entry["error"] == "no backend available"


def test_connect_failure_on_every_try_is_502(spawn, tmp_path, http_impl):
    dead = [{"name": f"dead{i}", "address": f"127.0.0.1:{free_port()}"} for i in range(3)]
    lb = spawn(Lb, tmp_path, dead, http=http_impl)
    resp = get(lb.port, "/")
    # the client learns nothing of lb's backends; the operator's log says which and why
    assert resp.status == 502 and resp.body == b"502 Bad Gateway\n"
    entry = wait_for(lambda: lb.access_lines(), 5, "access log")[0]
    assert entry["status"] == 502 and entry["retries"] == 2
    assert entry["error"].startswith("connect to backend dead") and "refused" in entry["error"]


def test_a_dead_backend_costs_no_request(spawn, tmp_path, http_impl):
    web = spawn(Backend, "web1")
    dead = {"name": "dead", "address": f"127.0.0.1:{free_port()}"}
    lb = spawn(Lb, tmp_path, [dead, web.config()], http=http_impl, balance="round_robin")
    statuses = [get(lb.port, "/").status for _ in range(20)]
    assert statuses == [200] * 20
    lines = wait_for(lambda: len(lb.access_lines()) >= 20 and lb.access_lines(), 5, "access log")
    assert any(line["retries"] == 1 for line in lines)


def test_get_is_retried_but_post_is_not_when_the_backend_closes_before_answering(spawn, tmp_path, http_impl):
    fake = FakeBackend()                      # accepts, reads the head, closes
    try:
        lb = spawn(Lb, tmp_path, [{"name": "fake", "address": fake.address}], http=http_impl)
        resp = get(lb.port, "/")
        assert resp.status == 502
        assert len(fake.requests) == 3         # the first try and two retries
        fake.requests.clear()
        with RawClient(lb.port) as client:
            client.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            assert client.response().status == 502
        assert len(fake.requests) == 1         # a POST is never sent twice
    finally:
        fake.stop()


def test_garbage_from_a_backend_is_502(spawn, tmp_path, http_impl):
    fake = FakeBackend(lambda conn, head: conn.sendall(b"NOT HTTP AT ALL\r\n\r\n"))
    try:
        lb = spawn(Lb, tmp_path, [{"name": "fake", "address": fake.address}], http=http_impl)
        resp = get(lb.port, "/")
        assert resp.status == 502 and resp.body == b"502 Bad Gateway\n"
        entry = wait_for(lambda: lb.access_lines(), 5, "access log")[0]
        assert entry["error"] == "bad response from backend"
    finally:
        fake.stop()


async def test_killing_a_backend_under_load_fails_no_request(spawn, tmp_path, http_impl):
    backends = [spawn(Backend, f"web{i}") for i in (1, 2, 3)]
    lb = spawn(Lb, tmp_path, [b.config() for b in backends], http=http_impl)
    async with Users("127.0.0.1", lb.port, slots=8, life=None, think_s=0, path="/slow?ms=20",
                     keep_cookie=False) as load:
        await wait_for_requests(load, 100)
        backends[1].signal(signal.SIGKILL)        # requests are in flight on it now
        await wait_for_requests(load, 300)
    statuses = [r.status for r in load.records]
    assert load.failures == [] and set(statuses) == {200}
    lines = wait_for(lambda: len(lb.access_lines()) >= len(statuses) and lb.access_lines(), 5, "log")
    assert any(line["retries"] for line in lines)    # the dead backend was hit, and covered


def test_backend_dying_mid_response_closes_the_client_without_a_fake_end(spawn, tmp_path, http_impl):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], http=http_impl)
    with RawClient(lb.port) as client:
        client.send(b"GET /stream?chunks=50&ms=100 HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""
        while b"chunk 1" not in received:
            received += client.sock.recv(65536)
        web.signal(signal.SIGKILL)
        while data := client.sock.recv(65536):
            received += data
    assert b"chunk 1" in received and not received.endswith(b"0\r\n\r\n")


def test_client_header_timeout_is_408_and_silent_connections_are_closed(spawn, tmp_path, http_impl):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], http=http_impl, timeouts=FAST_TIMEOUTS)
    with RawClient(lb.port, timeout_s=5) as client:
        started = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")      # never finished
        resp = client.response()
        assert resp.status == 408 and 0.4 < time.monotonic() - started < 2.0
        assert client.closed_by_peer()
    with RawClient(lb.port, timeout_s=5) as client:        # says nothing at all
        assert client.closed_by_peer()


def test_idle_keep_alive_connection_is_closed(spawn, tmp_path, http_impl):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], http=http_impl, timeouts=FAST_TIMEOUTS)
    with RawClient(lb.port, timeout_s=5) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.response().status == 200
        started = time.monotonic()
        assert client.closed_by_peer()
        assert 0.4 < time.monotonic() - started < 2.0


def test_upstream_first_byte_timeout_is_504(spawn, tmp_path, http_impl):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], http=http_impl, timeouts=FAST_TIMEOUTS)
    started = time.monotonic()
    resp = get(lb.port, "/slow?ms=3000")
    assert resp.status == 504 and time.monotonic() - started < 2.0
    assert get(lb.port, "/").status == 200


def test_connect_timeout(spawn, tmp_path, http_impl):
    # A listener whose accept queue is full: the kernel drops further SYNs, so
    # connecting hangs, all on loopback.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(blackhole.getsockname())
        fillers.append(filler)
    try:
        lb = spawn(Lb, tmp_path, [{"name": "hole", "address": "127.0.0.1:%d" % blackhole.getsockname()[1]}],
                   http=http_impl, timeouts=FAST_TIMEOUTS, retries=0)
        started = time.monotonic()
        resp = get(lb.port, "/")
        elapsed = time.monotonic() - started
        assert resp.status == 502
        assert 0.25 < elapsed < 2.0
        entry = wait_for(lambda: lb.access_lines(), 5, "access log")[0]
        assert entry["error"] == "connect to backend hole timed out"
    finally:
        for sock in (*fillers, blackhole):
            sock.close()


def test_sigterm_finishes_requests_in_flight_then_exits_0(spawn, tmp_path, http_impl):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], http=http_impl, drain={"timeout": "30s", "client_grace": "1s"})
    with RawClient(lb.port) as idle_client, RawClient(lb.port) as keep_alive, RawClient(lb.port) as client:
        for other in (idle_client, keep_alive):
            other.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert other.response().status == 200
        client.send(b"GET /stream?chunks=4&ms=300 HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""
        while b"chunk 0" not in received:
            received += client.sock.recv(65536)
        lb.signal(signal.SIGTERM)                           # the response is in flight
        wait_for(lambda: not port_open(lb.port), 5, "lb to stop accepting")
        # A keep-alive client's next request within drain.client_grace is served, and the
        # connection closed after it; one that stays idle is closed after the grace.
        keep_alive.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = keep_alive.response()
        assert answer.status == 200 and answer.getheader("connection") == "close"
        assert keep_alive.closed_by_peer()
        assert idle_client.closed_by_peer()
        while data := client.sock.recv(65536):
            received += data
    assert b"chunk 3" in received and received.endswith(b"0\r\n\r\n")
    assert lb.proc.wait(10) == 0


def _stream_upload(port: int, total: int) -> dict:
    with RawClient(port, timeout_s=60) as client:
        client.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"u" * (1 << 20)
        for _ in range(total // len(block)):
            client.send(block)
        return json.loads(client.response().body)


def _stream_download(port: int, total: int) -> int:
    with RawClient(port, timeout_s=60) as client:
        client.send(b"GET /bytes?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % total)
        head = client.head_lines()
        assert head[0] == b"HTTP/1.1 200 OK"
        count = 0
        while count < total:
            data = client._file.read1(1 << 20)
            assert data, "connection closed early"
            count += len(data)
        return count


def test_100mb_each_way_streams_in_bounded_memory(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])
    assert get(lb.port, "/").status == 200
    before_kib = lb.rss_kib("VmHWM")
    total = 100 * (1 << 20)
    assert _stream_upload(lb.port, total)["bytes"] == total
    assert _stream_download(lb.port, total) == total
    grown_mib = (lb.rss_kib("VmHWM") - before_kib) / 1024
    print(f"peak RSS growth over 2 x 100 MiB: {grown_mib:.1f} MiB")
    assert grown_mib < 50, f"lb's peak RSS grew by {grown_mib:.1f} MiB"


def _keep_serving(conn, first: bytes) -> None:
    """A backend connection that sends `first`, then answers every further request honestly."""
    conn.sendall(first)
    buffer = b""
    while True:
        try:
            data = conn.recv(65536)
        except OSError:
            return
        if not data:
            return
        buffer += data
        while b"\r\n\r\n" in buffer:
            _, buffer = buffer.split(b"\r\n\r\n", 1)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest")


@pytest.mark.parametrize("first, method", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON", "GET"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX", "GET"),                  # one byte too many
    (b"HTTP/1.1 204 No Content\r\n\r\nPOISON", "GET"),                             # a body on a 204
    (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON", "HEAD"),               # a body on a HEAD
])
def test_bytes_after_a_response_close_the_backend_connection(spawn, tmp_path, http_impl, first, method):
    fake = FakeBackend(lambda conn, head: _keep_serving(conn, first))
    try:
        lb = spawn(Lb, tmp_path, [{"name": "fake", "address": fake.address}], http=http_impl,
                   health={"interval": "30s"}, passive={"failures": 0})
        for _ in range(3):
            with RawClient(lb.port) as client:
                client.send(f"{method} / HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                resp = client.response(method)
                assert b"POISON" not in resp.body and b"honest" not in resp.body
        # each request went on a new backend connection: none was reused after its extra bytes
        assert len(fake.requests) == 3
    finally:
        fake.stop()


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 000 Zero", b"HTTP/1.1 600 Beyond", b"HTTP/1.1 099 Low"])
def test_a_status_outside_100_599_is_502(spawn, tmp_path, http_impl, status_line):
    fake = FakeBackend(lambda conn, head: conn.sendall(status_line + b"\r\nContent-Length: 2\r\n\r\nok"))
    try:
        lb = spawn(Lb, tmp_path, [{"name": "fake", "address": fake.address}], http=http_impl)
        assert get(lb.port, "/").status == 502
    finally:
        fake.stop()
