"""Skew protection in one data plane, in-process (fake transports, lb/proxy/skew.py): a named
version, a learned asset and its copy on disk, that copy served over HTTP/1.1 and HTTP/2."""

import asyncio
import os

import h2.events

from lb.core.planes import NodeView, RoutingView
from lb.core.skew import Asset, AssetsUpdate
from lb.files import store_dir
from test_dataplane import FakeTransport, Rig, h2_connection

ASSET = b"/assets/app.1234.js"
IMMUTABLE = b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=31536000, immutable\r\nContent-Type: text/javascript" \
            b"\r\nDate: Thu, 03 Dec 2026 15:00:00 GMT\r\nContent-Length: 7\r\n\r\nconsole"


def skew_rig(tmp_path, extra: str = "") -> Rig:
    config = ("backends:\n  - {name: web1, address: '127.0.0.1:9001', version: v1}\n"
              f"state_file: {tmp_path}/lb.state\n{extra}")
    rig = Rig(config_text=config)
    rig.plane.apply_view(RoutingView(2, (NodeView("web1", "127.0.0.1", 9001, "v1", 100.0, True, False),
                                         NodeView("web2", "127.0.0.1", 9002, "v2", 0.0, False, False, 0, True)),
                                     ("v1", "v2")))
    return rig


def fake_upstream(rig: Rig, name: str) -> tuple:
    """A pooled connection to node `name` on a fake transport: (connection, transport)."""
    from lb.proxy.upstream import UpstreamConnection
    connection, transport = UpstreamConnection(rig.plane.upstreams, rig.plane.table.routes[name]), FakeTransport()
    connection.connection_made(transport)
    rig.plane.upstreams.idle[name] = [connection]
    return connection, transport


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"


async def wait_until(predicate, what: str) -> None:
    for _ in range(500):                          # the thread that writes or reads a copy
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_an_immutable_answer_is_learned_copied_to_disk_and_reported(tmp_path):
    rig = skew_rig(tmp_path)
    rig.client.data_received(b"GET " + ASSET + b"?v=1&dpl=v1 HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.respond(IMMUTABLE)
    assert rig.client_transport.take().endswith(b"console")
    skew = rig.plane.skew
    await wait_until(lambda: skew.learned, "the copy written")
    asset = skew.learned[0]
    assert (asset.path, asset.version, asset.size) == (ASSET + b"?v=1", "v1", 7)      # dpl is not the file's
    assert dict(asset.headers) == {b"Cache-Control": b"public, max-age=31536000, immutable",
                                   b"Content-Type": b"text/javascript"}          # not its Date
    with open(os.path.join(store_dir(rig.plane.config), asset.digest), "rb") as file:
        assert file.read() == b"console"
    rig.plane.report()
    assert rig.reports[-1].assets == [asset] and skew.learned == []


async def test_an_answer_that_sets_a_cookie_is_learned_but_never_copied(tmp_path):
    rig = skew_rig(tmp_path)
    rig.client.data_received(b"GET " + ASSET + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.respond(IMMUTABLE.replace(b"Date:", b"Set-Cookie: session=1\r\nDate:"))
    assert rig.plane.skew.learned == [Asset(ASSET, "v1")] and not rig.plane.skew.capturing


async def test_a_404_for_a_known_asset_falls_back_to_the_stored_copy_over_http1_and_http2(tmp_path):
    rig = skew_rig(tmp_path)
    rig.client.data_received(b"GET " + ASSET + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.respond(IMMUTABLE)
    rig.client_transport.take()
    rig.upstream_transport.take()
    await wait_until(lambda: rig.plane.skew.learned, "the copy written")
    asset = rig.plane.skew.learned[0]
    rig.plane.apply_view(RoutingView(3, (NodeView("web2", "127.0.0.1", 9002, "v2", 100.0, True, False),),
                                     ("v1", "v2")))         # v1 left: web2 (v2) alone in service
    rig.plane.apply_assets(AssetsUpdate(add=(asset,), retired={"v1": 0.0}))
    rig.plane.skew.retention = 10 ** 12               # the fake time 0.0 is long ago: keep it in
    web2, web2_transport = fake_upstream(rig, "web2")
    rig.client.data_received(b"GET " + ASSET + b" HTTP/1.1\r\nHost: a\r\nCookie: lb_version=v2\r\n\r\n")
    assert web2_transport.take().startswith(b"GET " + ASSET)   # its user's version first
    web2.data_received(NOT_FOUND)                              # v2 has no such file
    await wait_until(lambda: rig.client_transport.out.endswith(b"console"), "the copy served")
    answer = rig.client_transport.take()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 7\r\n" in answer
    assert b"immutable" in answer and b"Set-Cookie" not in answer and b"not found" not in answer
    assert web2_transport.closed                               # the 404's connection is not reused

    web2, web2_transport = fake_upstream(rig, "web2")
    client, conn, transport = h2_connection(rig)
    client.send_headers(1, [(b":method", b"GET"), (b":path", ASSET), (b":scheme", b"http"),
                            (b":authority", b"a")], end_stream=True)
    conn.data_received(client.data_to_send())
    await wait_until(lambda: web2_transport.out, "the request to v2")
    web2.data_received(NOT_FOUND)
    events = []
    await wait_until(lambda: events.extend(client.receive_data(transport.take())) or
                     any(isinstance(e, h2.events.StreamEnded) for e in events), "the copy over HTTP/2")
    headers = dict(next(e for e in events if isinstance(e, h2.events.ResponseReceived)).headers)
    assert headers[b":status"] == b"200" and headers[b"content-length"] == b"7"
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"console"
    rig.plane.report()
    assert sum(r.skew["store", "v1"] for r in rig.reports if r.skew) == 2


async def test_a_404_for_a_known_asset_goes_to_a_version_in_service_that_has_it(tmp_path):
    rig = skew_rig(tmp_path)
    rig.plane.apply_view(RoutingView(3, (NodeView("web1", "127.0.0.1", 9001, "v1", 100.0, True, False),
                                         NodeView("web2", "127.0.0.1", 9002, "v2", 100.0, True, False)),
                                     ("v1", "v2")))
    rig.plane.apply_assets(AssetsUpdate(add=(Asset(ASSET, "v1"),)))
    web2, web2_transport = fake_upstream(rig, "web2")
    rig.client.data_received(b"GET " + ASSET + b" HTTP/1.1\r\nHost: a\r\nCookie: lb_version=v2\r\n\r\n")
    web2.data_received(NOT_FOUND)
    assert rig.upstream_transport.take().startswith(b"GET " + ASSET)    # then to web1, v1
    rig.respond(IMMUTABLE)
    answer = rig.client_transport.take()
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"console") and b"Set-Cookie" not in answer
    assert rig.client.current is None and rig.plane.skew.counts["asset", "v1"] == 1


async def test_a_stored_copy_goes_out_as_fast_as_the_client_reads_it(tmp_path):
    """A client that reads nothing and pipelines requests for a big copy: the worker holds one
    piece beyond the write buffer's high-water mark, not a copy per request."""
    rig = skew_rig(tmp_path)
    body = b"x" * (1 << 20)
    from lb.files import write_copy
    digest = write_copy(store_dir(rig.plane.config), body)
    rig.plane.apply_view(RoutingView(3, (NodeView("web2", "127.0.0.1", 9002, "v2", 100.0, True, False),),
                                     ("v1", "v2")))
    rig.plane.apply_assets(AssetsUpdate(add=(Asset(ASSET, "v1", digest, len(body)),), retired={}))
    web2, web2_transport = fake_upstream(rig, "web2")
    written, full = [], [True]                  # the client's socket buffer: full past 100 kB

    def write(data):
        written.append(len(data))
        if full[0] and sum(written) > 100_000 and not rig.client.write_paused:
            rig.client.pause_writing()
    rig.client_transport.write = write
    rig.client.data_received(b"GET " + ASSET + b" HTTP/1.1\r\nHost: a\r\n\r\n" * 30)
    web2.data_received(NOT_FOUND)
    await wait_until(lambda: sum(written) > 100_000, "the copy begun")
    await asyncio.sleep(0.05)
    assert sum(written) < 200_000                       # paused: the rest waits in lb's copy
    full[0] = False
    rig.client.resume_writing()
    assert sum(written) > 1 << 20                       # the rest of the copy, once it reads


async def test_a_request_naming_a_weightless_version_with_the_secret_reaches_it_and_the_app_never_sees_it(tmp_path):
    secret = b"a-secret-of-sixteen-or-more"
    rig = skew_rig(tmp_path, "skew: {override_from: [{header: X-Lb-Override, secret: %s}]}\n" % secret.decode())
    web2 = FakeTransport()
    from lb.proxy.upstream import UpstreamConnection
    upstream = UpstreamConnection(rig.plane.upstreams, rig.plane.table.routes["web2"])
    upstream.connection_made(web2)
    rig.plane.upstreams.idle["web2"] = [upstream]
    rig.client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nX-Lb-Version: v2\r\nX-Lb-Override: " + secret + b"\r\n\r\n")
    sent = web2.take()
    assert sent.startswith(b"GET / ") and secret not in sent and b"X-Lb-Override" not in sent
    assert rig.client.current.pin_how == "override" and rig.upstream_transport.take() == b""


async def test_a_named_request_retried_on_another_node_still_leaves_the_cookie_alone(tmp_path):
    rig = skew_rig(tmp_path)
    rig.plane.apply_view(RoutingView(3, (NodeView("web1", "127.0.0.1", 9001, "v1", 100.0, True, False),
                                         NodeView("web3", "127.0.0.1", 9003, "v2", 100.0, True, False)),
                                     ("v1", "v2")))
    rig.client.data_received(b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Lb-Version: v1\r\nCookie: lb_version=v2\r\n\r\n")
    exchange = rig.client.current
    assert (exchange.version, exchange.pin_how, exchange.route.name) == ("v1", "header", "web1")
    rig.upstream.connection_lost(None)                 # web1 goes before answering: a retry, on v2
    await wait_until(lambda: exchange.tried and exchange.tried[-1].name == "web3", "the retry")
    assert (exchange.version, exchange.pin_how, exchange.pin_cookie) == ("v2", "header", None)


async def test_a_copy_answered_before_its_request_s_body_ended_does_not_leave_the_connection_hanging(tmp_path):
    rig = skew_rig(tmp_path)
    from lb.files import write_copy
    digest = write_copy(store_dir(rig.plane.config), b"console")
    rig.plane.apply_view(RoutingView(3, (NodeView("web2", "127.0.0.1", 9002, "v2", 100.0, True, False),),
                                     ("v1", "v2")))
    rig.plane.apply_assets(AssetsUpdate(add=(Asset(ASSET, "v1", digest, 7),), retired={}))
    web2, _ = fake_upstream(rig, "web2")
    rig.client.data_received(b"GET " + ASSET + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
    web2.data_received(NOT_FOUND)                         # answered before the body came
    await wait_until(lambda: rig.client_transport.out.endswith(b"console"), "the copy served")
    rig.client_transport.take()
    rig.client.data_received(b"12345")                    # the body ends: the exchange is done
    # (closed, as after any answer that came before its request's end: not left hanging)
    assert rig.client.current is None and rig.client.mode.name in ("IDLE", "CLOSED", "LINGERING")
