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


async def test_a_stored_copy_is_served_over_http1_and_http2_when_its_version_is_gone(tmp_path):
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
    rig.client.data_received(b"GET " + ASSET + b" HTTP/1.1\r\nHost: a\r\nCookie: lb_version=v2\r\n\r\n")
    await wait_until(lambda: rig.client_transport.out.endswith(b"console"), "the copy served")
    answer = rig.client_transport.take()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 7\r\n" in answer
    assert b"immutable" in answer and b"Set-Cookie" not in answer
    assert rig.upstream_transport.take() == b""        # no backend asked

    client, conn, transport = h2_connection(rig)
    client.send_headers(1, [(b":method", b"GET"), (b":path", ASSET), (b":scheme", b"http"),
                            (b":authority", b"a")], end_stream=True)
    conn.data_received(client.data_to_send())
    events = []
    await wait_until(lambda: events.extend(client.receive_data(transport.take())) or
                     any(isinstance(e, h2.events.StreamEnded) for e in events), "the copy over HTTP/2")
    headers = dict(next(e for e in events if isinstance(e, h2.events.ResponseReceived)).headers)
    assert headers[b":status"] == b"200" and headers[b"content-length"] == b"7"
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"console"
    rig.plane.report()
    assert sum(r.skew["store", "v1"] for r in rig.reports if r.skew) == 2


async def test_a_corrupt_copy_is_not_served_and_the_request_goes_to_a_version_in_service(tmp_path):
    rig = skew_rig(tmp_path)
    folder = store_dir(rig.plane.config)
    os.makedirs(folder)
    digest = "0" * 64
    with open(os.path.join(folder, digest), "wb") as file:
        file.write(b"not what the digest says")
    rig.plane.apply_assets(AssetsUpdate(add=(Asset(ASSET, "v0", digest, 24),), retired={"v0": 1e18}))
    rig.plane.apply_view(RoutingView(3, (NodeView("web1", "127.0.0.1", 9001, "v1", 100.0, True, False),),
                                     ("v0", "v1")))
    rig.client.data_received(b"GET " + ASSET + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    await wait_until(lambda: rig.upstream_transport.out, "the request sent to v1")
    assert not os.path.exists(os.path.join(folder, digest))       # deleted: a later answer writes it again
    assert rig.plane.skew.counts["store_missing", "v0"] == 1


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
