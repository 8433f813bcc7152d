"""proxy.py end to end: a real lb process over real `lb backend` processes.

The tests in this module share one lb per parser implementation (`shared_lb`)
and three backends; tests that change backends or config start their own.
"""

import asyncio
import json
import time

import aiohttp
import pytest

from conftest import RawClient, get, wait_for


def test_get_reaches_a_backend_and_carries_its_version(shared_lb):
    resp = get(shared_lb.port, "/")
    assert resp.status == 200
    body = json.loads(resp.body)
    assert body["version"] == "v1" and body["node"] in {"web1", "web2", "web3"}
    assert resp.getheader("X-Backend-Version") == "v1"
    assert resp.reason == "OK"


def test_keep_alive_on_both_sides_and_no_binding_to_a_backend(shared_lb):
    seen_nodes, upstream_conns = set(), set()
    with RawClient(shared_lb.port) as client:
        for _ in range(60):
            client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = client.response()
            assert resp.status == 200
            node = resp.getheader("X-Backend-Node")
            seen_nodes.add(node)
            upstream_conns.add((node, resp.getheader("X-Backend-Conn")))
    assert seen_nodes == {"web1", "web2", "web3"}       # one client connection, every backend
    assert len(upstream_conns) < 60 / 4                  # backends saw far fewer connections


def test_client_connection_close_still_reuses_upstream_connections(shared_lb):
    upstream_conns = set()
    for _ in range(30):
        resp = get(shared_lb.port, "/", headers={"Connection": "close"})
        assert resp.status == 200 and resp.getheader("Connection") == "close"
        upstream_conns.add((resp.getheader("X-Backend-Node"), resp.getheader("X-Backend-Conn")))
    assert len(upstream_conns) < 10


def test_post_body_and_headers_are_rebuilt(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"POST /echo?q=1 HTTP/1.1\r\nHost: front.example\r\nContent-Length: 5\r\n"
                    b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n"
                    b"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
                    b"TE: trailers\r\nProxy-Connection: keep-alive\r\nX_Under: 1\r\nVia: 1.0 edge\r\n"
                    b"X-Custom: kept\r\n\r\nhello")
        resp = client.response()
    echo = json.loads(resp.body)
    headers = {}
    for name, value in echo["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    assert echo["body"] == "hello" and echo["path"] == "/echo?q=1"
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-host"] == ["front.example"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["via"] == ["1.0 edge, 1.1 lb"]
    assert headers["host"] == ["front.example"] and headers["x-custom"] == ["kept"]
    for hop in ("x-hop", "keep-alive", "te", "proxy-connection", "x_under", "connection"):
        assert hop not in headers, hop


def test_response_hop_by_hop_headers_are_not_passed(shared_lb):
    resp = get(shared_lb.port, "/stream?chunks=2&ms=1")
    names = [n.lower() for n, _ in resp.getheaders()]
    assert names.count("transfer-encoding") == 1 and "keep-alive" not in names
    assert resp.body == b"chunk 0\nchunk 1\n"


def test_chunked_request_is_rechunked_and_trailers_dropped(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n")
        resp = client.response()
        echo = json.loads(resp.body)
        assert echo["body"] == "abcdefg"
        names = [n.lower() for n, _ in echo["headers"]]
        assert "transfer-encoding" in names and "content-length" not in names
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")   # the connection is still in step
        assert client.response().status == 200


def test_head_204_304_have_no_body_and_keep_the_stream_in_step(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        head = client.response("HEAD")
        assert head.status == 200 and int(head.getheader("Content-Length")) > 20 and head.body == b""
        for status in (204, 304):
            client.send(b"GET /status/%d HTTP/1.1\r\nHost: t\r\n\r\n" % status)
            resp = client.response()
            assert resp.status == status and resp.body == b""
            assert resp.getheader("Transfer-Encoding") is None
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = client.response()
        assert resp.status == 200 and json.loads(resp.body)["version"] == "v1"


def test_expect_100_continue(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                    b"Expect: 100-continue\r\n\r\n")
        assert client.head_lines() == [b"HTTP/1.1 100 Continue"]   # before any body byte
        client.send(b"body")
        resp = client.response()
        assert resp.status == 200 and json.loads(resp.body)["body"] == "body"


def test_pipelined_requests_are_answered_in_order(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"GET /slow?ms=200 HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                    b"GET /status/201 HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"GET /echo?last HTTP/1.1\r\nHost: t\r\n\r\n")
        first, second, third, fourth = (client.response() for _ in range(4))
    assert first.status == 200 and "node" in json.loads(first.body)
    assert json.loads(second.body)["body"] == "abc"
    assert third.status == 201
    assert json.loads(fourth.body)["path"] == "/echo?last"


def test_http10_client_gets_a_close_delimited_or_sized_body(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"GET /stream?chunks=3&ms=1 HTTP/1.0\r\n\r\n")
        resp = client.response()
        assert resp.body == b"chunk 0\nchunk 1\nchunk 2\n"
        assert resp.getheader("Transfer-Encoding") is None
        assert client.closed_by_peer()


def test_http10_keep_alive_is_honoured(shared_lb):
    with RawClient(shared_lb.port) as client:
        for _ in range(3):
            client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            resp = client.response()
            assert resp.status == 200 and resp.getheader("Connection") == "keep-alive"


BAD_REQUESTS = [
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-A : 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize("data, status", BAD_REQUESTS)
def test_bad_requests_get_4xx_and_a_closed_connection(shared_lb, data, status):
    with RawClient(shared_lb.port) as client:
        client.send(data)
        resp = client.response()
        assert resp.status == status and resp.getheader("Connection") == "close"
        assert client.closed_by_peer()
    assert get(shared_lb.port, "/").status == 200   # other traffic is unaffected


def test_bad_request_after_good_pipelined_ones_is_answered_in_turn(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"GET /slow?ms=100 HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"GET / HTTP/1.1\r\nHost: t\r\nX-A : 1\r\n\r\n")
        statuses = [client.response().status for _ in range(3)]
        assert statuses == [200, 200, 400]
        assert client.closed_by_peer()


async def test_websocket_is_tunnelled_after_101(shared_lb):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{shared_lb.url}/ws", timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
            for text in ("hello", "x" * 100_000):
                await ws.send_str(text)
                msg = await asyncio.wait_for(ws.receive(), 5)
                assert msg.data == text
            await ws.send_bytes(b"\x00\x01")
            assert (await asyncio.wait_for(ws.receive(), 5)).data == b"\x00\x01"
            await ws.close()
        assert ws.close_code == 1000
    # both sides closed: lb keeps no half-closed tunnel behind
    await asyncio.to_thread(wait_for, lambda: sum(s["tunnels"] for s in shared_lb.ctl(
        "show servers")["servers"]) == 0, 2, "the tunnel to be gone")


def test_refused_upgrade_leaves_a_working_http_connection(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        resp = client.response()
        assert resp.status == 200
        client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        assert json.loads(client.response().body)["path"] == "/echo"


def test_response_streams_before_it_is_complete(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"GET /stream?chunks=2&ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        client.sock.settimeout(1.2)
        received = b""
        while b"chunk 0" not in received:      # raises TimeoutError after 1.2 s of silence
            received += client.sock.recv(65536)
        assert b"chunk 1" not in received and time.monotonic() - started < 1.2


def test_access_log_has_one_json_line_per_request_without_secrets(shared_lb):
    marker = f"/echo?marker={time.monotonic_ns()}"
    resp = get(shared_lb.port, marker, headers={"Cookie": "session=SECRETCOOKIE",
                                                 "Authorization": "Bearer SECRETTOKEN"})
    assert resp.status == 200
    line = wait_for(lambda: next((entry for entry in shared_lb.access_lines()
                                  if entry.get("path") == "/echo" and entry["bytes"] == len(resp.body)),
                                 None), 5, "the access log line")
    assert set(line) == {"time", "client", "method", "path", "status", "bytes", "backend",
                         "version", "duration_ms", "retries", "pin", "worker"}
    assert line["worker"] in range(len(shared_lb.ctl("show info")["workers"]))
    assert line["pin"] == {"version": "v1", "how": "assigned"}     # http.client keeps no cookie
    assert line["status"] == 200 and line["method"] == "GET" and line["version"] == "v1"
    assert line["backend"] in {"web1", "web2", "web3"} and line["retries"] == 0
    text = shared_lb.access_log.read_text()
    assert "SECRET" not in text and "marker" not in text


def test_slow_upload_is_not_a_first_byte_timeout(spawn, tmp_path, http_impl):
    from conftest import Backend, Lb
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], http=http_impl,
               timeouts={"upstream_first_byte": "500ms"})
    with RawClient(lb.port) as client:
        client.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\n")
        for piece in (b"abcd", b"efgh", b"ijkl"):        # 1.2 s of upload
            time.sleep(0.4)
            client.send(piece)
        resp = client.response()
    assert resp.status == 200 and json.loads(resp.body)["bytes"] == 12


def test_pipelined_head_with_empty_body_then_get(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"HEAD /status/200 HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"GET /echo?after-head HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"GET /echo?last HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.response("HEAD").body == b""
        assert json.loads(client.response().body)["path"] == "/echo?after-head"
        assert client.response("HEAD").body == b""
        assert json.loads(client.response().body)["path"] == "/echo?last"


def test_pin_cookie_is_added_beside_the_apps_own_and_the_request_cookie_is_untouched(shared_lb):
    with RawClient(shared_lb.port) as client:
        client.send(b"GET /setcookie HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = client.response()
        cookies = [v for n, v in resp.getheaders() if n.lower() == "set-cookie"]
        assert "app=1; Path=/" in cookies
        assert "lb_version=v1; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400" in cookies
        client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nCookie: app=1; lb_version=v1\r\n\r\n")
        resp = client.response()
        assert resp.getheader("Set-Cookie") is None               # a valid pin is kept quietly
        echoed = dict((n.lower(), v) for n, v in json.loads(resp.body)["headers"])
        assert echoed["cookie"] == "app=1; lb_version=v1"
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\nCookie: lb_version=v999\r\n\r\n")
        resp = client.response()                                  # unknown pin: as if none
        assert resp.status == 200 and resp.getheader("Set-Cookie").startswith("lb_version=v1;")


def test_pinning_mode_none_sets_no_cookie(spawn, tmp_path, http_impl):
    from conftest import Backend, Lb
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], http=http_impl, pinning={"mode": "none"})
    resp = get(lb.port, "/")
    assert resp.status == 200 and resp.getheader("Set-Cookie") is None
