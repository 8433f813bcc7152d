"""lb/control/etcd.py's pure parts: the encoding, the request and answer shapes of etcd's JSON
gateway (as etcd 3.4.23 sends them, copied from its answers), the endpoint rotation. The calls
themselves are tested against a real etcd in tests/e2e/test_etcd_store.py."""

from __future__ import annotations

import pytest

from lb.control.etcd import (
    Compare, Delete, Endpoints, EtcdError, Put, b64, check_not_canceled, decode_answer, error_from, key_range,
    parse_endpoint, parse_events, parse_range, prefix_end, request_bytes, stream_message, take_lines,
    txn_request, unb64, unchanged_since,
)


@pytest.mark.parametrize("prefix, end", [
    (b"/lb/prod/", b"/lb/prod0"),
    (b"a", b"b"),
    (b"a\xff", b"b"),
    (b"a\xff\xff", b"b"),
    (b"\xff", b"\0"),
    (b"", b"\0"),
    ("/lb/", b"/lb0"),
])
def test_prefix_end_is_the_first_key_after_every_key_with_the_prefix(prefix, end):
    assert prefix_end(prefix) == end


@pytest.mark.parametrize("key, prefix, body", [
    ("/lb/a", False, {"key": "L2xiL2E="}),
    ("/lb/", True, {"key": "L2xiLw==", "range_end": "L2xiMA=="}),
    ("", True, {"key": "AA==", "range_end": "AA=="}),          # every key
])
def test_key_range(key, prefix, body):
    assert key_range(key, prefix) == body


def test_base64_both_ways_and_bad_base64_is_refused():
    assert b64("é") == "w6k=" and unb64("w6k=") == "é".encode()
    assert b64(b"\x00\xff") == "AP8="
    with pytest.raises(ValueError):
        unb64("not base64!")


@pytest.mark.parametrize("op, body", [
    (Put("/k", b"v"), {"request_put": {"key": "L2s=", "value": "dg=="}}),
    (Put("/k", "v", lease=7961135149784625417), {"request_put": {"key": "L2s=", "value": "dg==",
                                                                 "lease": "7961135149784625417"}}),
    (Delete("/k"), {"request_delete_range": {"key": "L2s="}}),
    (Delete("/k/", prefix=True), {"request_delete_range": {"key": "L2sv", "range_end": "L2sw"}}),
])
def test_txn_operations(op, body):
    assert op.txn_op() == body


@pytest.mark.parametrize("compare, body", [
    (unchanged_since("/k", 42), {"key": "L2s=", "target": "MOD", "result": "EQUAL", "mod_revision": "42"}),
    (Compare("/k", "MOD", 0), {"key": "L2s=", "target": "MOD", "result": "EQUAL", "mod_revision": "0"}),
    (Compare("/k", "VERSION", 3, ">"), {"key": "L2s=", "target": "VERSION", "result": "GREATER", "version": "3"}),
    (Compare("/k", "CREATE", 5, "<"), {"key": "L2s=", "target": "CREATE", "result": "LESS", "create_revision": "5"}),
    (Compare("/k", "VALUE", "v", "!="), {"key": "L2s=", "target": "VALUE", "result": "NOT_EQUAL", "value": "dg=="}),
])
def test_compares(compare, body):
    assert compare.request() == body


@pytest.mark.parametrize("compare", [Compare("/k", "LEASE", 1), Compare("/k", "MOD", 1, "=~")])
def test_a_compare_etcd_has_no_name_for_is_refused(compare):
    with pytest.raises(EtcdError, match="expected a target in"):
        compare.request()


def test_a_txn_request_carries_compares_and_both_branches():
    body = txn_request([unchanged_since("/k", 2)], [Put("/k", "v")], [Delete("/x")])
    assert body == {"compare": [{"key": "L2s=", "target": "MOD", "result": "EQUAL", "mod_revision": "2"}],
                    "success": [{"request_put": {"key": "L2s=", "value": "dg=="}}],
                    "failure": [{"request_delete_range": {"key": "L3g="}}]}


HEADER = {"cluster_id": "16391569269387198378", "member_id": "396107247362666107", "revision": "2", "raft_term": "2"}


def test_a_range_answer_with_keys_and_one_without():
    found = parse_range({"header": HEADER, "count": "1", "kvs": [
        {"key": "YQ==", "create_revision": "2", "mod_revision": "2", "version": "1", "value": "MQ=="}]})
    assert found.revision == 2
    assert [(kv.key, kv.value, kv.mod_revision, kv.version, kv.lease) for kv in found.kvs] == [("a", b"1", 2, 1, 0)]
    assert found.value("a").create_revision == 2 and found.value("b") is None
    empty = parse_range({"header": HEADER})          # no kvs, no count: zero values are left out
    assert empty.kvs == () and empty.revision == 2


def test_watch_events_put_and_delete_in_order():
    result = {"header": HEADER, "events": [
        {"kv": {"key": "cC8x", "create_revision": "3", "mod_revision": "3", "version": "1", "value": "MQ=="}},
        {"type": "DELETE", "kv": {"key": "cC8w", "mod_revision": "5"}}]}
    assert [(e.kind, e.key, e.value, e.mod_revision) for e in parse_events(result)] == [
        ("put", "p/1", b"1", 3), ("delete", "p/0", b"", 5)]
    assert parse_events({"header": HEADER, "created": True}) == []


def test_a_watch_on_a_compacted_revision_is_an_error_that_says_from_where_to_read():
    with pytest.raises(EtcdError, match="revision 1 was compacted") as refused:
        check_not_canceled({"header": HEADER, "canceled": True, "compact_revision": "3"}, "p/", 1)
    assert refused.value.compact_revision == 3
    with pytest.raises(EtcdError, match="canceled by etcd: no reason given"):
        check_not_canceled({"canceled": True}, "p/", 1)
    check_not_canceled({"header": HEADER, "created": True}, "p/", 1)


@pytest.mark.parametrize("status, body, message, code", [
    (404, b'{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}',
     "etcd at e:1: etcdserver: requested lease not found", 5),
    (503, b'{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}',
     "etcd at e:1: etcdserver: no leader", 14),
    # a streaming call's error (watch, keepalive): the code inside, as etcd 3.4 sends it
    (503, b'{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service '
          b'Unavailable"}}', "etcd at e:1: etcdserver: no leader", 14),
    (404, b"Not Found\n", "etcd at e:1: Not Found", None),
    (502, b"", "etcd at e:1: HTTP 502", None),
])
def test_error_answers(status, body, message, code):
    error = error_from(status, body, "e:1")
    assert (error.message, error.code) == (message, code)
    with pytest.raises(EtcdError) as refused:
        decode_answer(status, body, "e:1")
    assert refused.value.message == message


@pytest.mark.parametrize("body", [b"<html>", b"[1, 2]"])
def test_an_answer_that_is_not_a_json_object_is_refused(body):
    with pytest.raises(EtcdError, match="etcd at e:1: not a JSON"):
        decode_answer(200, body, "e:1")


def test_stream_messages_results_and_errors():
    assert stream_message(b'{"result":{"ID":"4","TTL":"2"}}', "e:1") == {"ID": "4", "TTL": "2"}
    with pytest.raises(EtcdError, match="etcd at e:1: no leader") as refused:
        stream_message(b'{"error":{"grpc_code":14,"http_code":503,"message":"no leader","http_status":"Unavailable"}}',
                       "e:1")
    assert refused.value.code == 14
    with pytest.raises(EtcdError, match="not a JSON message"):
        stream_message(b"{", "e:1")


@pytest.mark.parametrize("pieces", [
    [b'{"a":1}\n{"b":2}\n'],
    [b'{"a":', b'1}\n{"b"', b":2}\n"],
    [b'{"a":1}\n\n', b'{"b":2}\n'],
])
def test_take_lines_whatever_the_pieces(pieces):
    buffer, lines = bytearray(), []
    for piece in pieces:
        buffer += piece
        lines += take_lines(buffer)
    assert lines == [b'{"a":1}', b'{"b":2}'] and buffer == b""


def test_an_unfinished_message_over_the_bound_is_refused():
    buffer = bytearray(b"x" * 11)
    with pytest.raises(EtcdError, match="a message over 10 bytes"):
        take_lines(buffer, max_bytes=10)
    assert take_lines(bytearray(b"x" * 10), max_bytes=10) == []


def test_a_request_is_one_post_with_its_length_and_connection_close():
    data = request_bytes("127.0.0.1:2379", "/v3/kv/range", {"key": "YQ=="})
    head, body = data.split(b"\r\n\r\n")
    assert head.split(b"\r\n") == [b"POST /v3/kv/range HTTP/1.1", b"Host: 127.0.0.1:2379", b"Content-Type: application/json",
                                   b"Content-Length: 14", b"Connection: close"]
    assert body == b'{"key":"YQ=="}'


@pytest.mark.parametrize("endpoint, parsed", [
    ("127.0.0.1:2379", ("127.0.0.1", 2379)),
    ("etcd-1.internal:2379", ("etcd-1.internal", 2379)),
    ("[::1]:2379", ("::1", 2379)),
])
def test_endpoints_parse(endpoint, parsed):
    assert parse_endpoint(endpoint) == parsed


@pytest.mark.parametrize("endpoint", ["127.0.0.1", ":2379", "host:0", "host:65536", "host:x", "http://h:2379/"])
def test_a_bad_endpoint_is_refused_with_what_was_expected(endpoint):
    with pytest.raises(EtcdError, match=f"expected HOST:PORT, got '{endpoint}'"):
        parse_endpoint(endpoint)


def test_endpoint_rotation_starts_at_the_one_that_answered_last():
    endpoints = Endpoints(["a:1", "b:2", "c:3"])
    assert endpoints.order() == ["a:1", "b:2", "c:3"]
    endpoints.answered("b:2")
    assert endpoints.order() == ["b:2", "c:3", "a:1"]
    endpoints.skip("c:3")
    assert endpoints.order() == ["a:1", "b:2", "c:3"]
    endpoints.skip("b:2")
    assert endpoints.order() == ["c:3", "a:1", "b:2"]


def test_no_endpoints_or_a_bad_one_is_refused():
    with pytest.raises(EtcdError, match="expected at least one HOST:PORT, got none"):
        Endpoints([])
    with pytest.raises(EtcdError, match="got 'nope'"):
        Endpoints(["a:1", "nope"])


async def test_a_revoke_at_a_stop_gives_each_endpoint_its_share_of_the_time():
    """The first endpoint accepts and never answers (a hung member): the revoke still reaches the
    second one within the stop's bound, instead of spending it all on the first."""
    import asyncio

    from lb.control.etcd import EtcdClient, EtcdError, Lease

    reached: list[int] = []
    held = []

    async def hang(index, reader, writer):
        reached.append(index)
        held.append(writer)                    # never answers, never closes

    servers = [await asyncio.start_server(lambda r, w, i=i: hang(i, r, w), "127.0.0.1", 0) for i in range(2)]
    endpoints = [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    client = EtcdClient(endpoints)
    try:
        with pytest.raises((EtcdError, asyncio.TimeoutError)):
            await asyncio.wait_for(client.revoke(Lease(7, 10), within_s=2.0), 2.0)
        assert reached[:2] == [0, 1], reached
    finally:
        for writer in held:
            writer.close()
        for server in servers:
            server.close()
        await client.close()
