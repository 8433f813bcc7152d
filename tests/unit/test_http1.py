"""lb/core/http1: both parser implementations, fed whole, byte by byte and in odd splits."""

import pytest

from lb.core import http1
from lb.core.http1 import heads
from lb.core.errors import HttpError

IMPLS = list(http1.PARSERS)
SPLITS = ["whole", "bytewise", "odd"]


class Sink:
    """Records what a parser reports; body pieces are joined per message."""

    def __init__(self):
        self.messages = []

    def on_request_begin(self):
        pass

    def on_request(self, head):
        self.messages.append({"head": head, "body": b"", "ended": False})

    def on_request_body(self, data):
        self.messages[-1]["body"] += data

    def on_request_end(self):
        self.messages[-1]["ended"] = True

    on_response = on_request
    on_response_body = on_request_body
    on_response_end = on_request_end


def pieces(data: bytes, split: str):
    if split == "whole":
        return [data]
    if split == "bytewise":
        return [data[i:i + 1] for i in range(len(data))]
    sizes, out, i = [3, 7, 1, 13, 2], [], 0
    while i < len(data):
        size = sizes[len(out) % len(sizes)]
        out.append(data[i:i + size])
        i += size
    return out


def parse_requests(impl, data, split="whole", max_header_bytes=16384):
    sink = Sink()
    parser = http1.PARSERS[impl][0](sink, max_header_bytes)
    for piece in pieces(data, split):
        parser.feed(piece)
    return sink.messages, parser


def names(head):
    return [n.lower() for n, _ in head.headers]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", SPLITS)
def test_get_and_post_and_chunked_in_one_stream(impl, split):
    data = (b"GET /a?x=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: t\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\nhello"
            b"PUT /c HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: dropped\r\n\r\n")
    messages, _ = parse_requests(impl, data, split)
    assert [m["head"].method for m in messages] == [b"GET", b"POST", b"PUT"]
    assert [m["head"].target for m in messages] == [b"/a?x=1", b"/b", b"/c"]
    assert [m["body"] for m in messages] == [b"", b"hello", b"abcde"]
    assert all(m["ended"] for m in messages)
    get, post, put = (m["head"] for m in messages)
    assert get.host == b"example" and get.keep_alive and not get.has_body
    assert post.content_length == 5 and not post.chunked
    assert put.chunked and put.content_length is None
    assert names(put) == []  # Host and TE are carried as fields, not as forwarded headers


HEAD_CASES = [
    # (request bytes, attribute checks, forwarded header names)
    (b"GET / HTTP/1.0\r\n\r\n", {"keep_alive": False, "host": None}, []),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", {"keep_alive": True}, []),
    (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", {"keep_alive": False}, []),
    (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-secret\r\nX-Secret: 1\r\nX-Kept: 2\r\n"
     b"Keep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\r\n", {}, [b"x-kept"]),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n"
     b"X-Forwarded-Proto: https\r\n\r\n", {}, []),
    (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\nX-Ok: 1\r\n\r\n",
     {"chunked": False}, [b"x-ok"]),
    (b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", {"upgrade": None}, []),
    (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
     {"expect_continue": True, "content_length": 0}, []),
    (b"GET / HTTP/1.1\r\nHost: h\r\nVia: 1.0 other\r\n\r\n", {"via": b"1.0 other"}, []),
    (b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nAuthorization: x\r\n\r\n",
     {}, [b"cookie", b"authorization"]),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("data, attrs, forwarded", HEAD_CASES)
def test_request_heads(impl, data, attrs, forwarded):
    messages, _ = parse_requests(impl, data)
    head = messages[0]["head"]
    for attr, value in attrs.items():
        assert getattr(head, attr) == value, attr
    assert names(head) == forwarded


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", SPLITS)
def test_upgrade_request_keeps_what_follows(impl, split):
    data = (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: k\r\n\r\n")
    messages, parser = parse_requests(impl, data, split)
    assert messages[0]["head"].upgrade == b"websocket" and messages[0]["ended"]
    assert names(messages[0]["head"]) == [b"sec-websocket-key"]
    messages, parser = parse_requests(impl, data + b"\x81\x05frame")
    assert parser.leftover == b"\x81\x05frame"


def test_http10_with_transfer_encoding_is_read_then_closed():
    for impl in IMPLS:
        messages, _ = parse_requests(
            impl, b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
        head = messages[0]["head"]
        assert messages[0]["body"] == b"hi" and head.chunked and not head.keep_alive


REJECT = [
    # (name, request bytes, status); every implementation must refuse each one
    ("te+cl", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
    ("cl+te", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("two different cl", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
    ("two equal cl", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("cl list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n", 400),
    ("cl plus", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", 400),
    ("cl negative", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    ("cl hex", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", 400),
    ("te gzip,chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    ("te chunked,gzip", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("te xchunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    ("te twice", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te identity", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost: h\r\nX-A : 1\r\n\r\n", 400),
    ("nul in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", 400),
    ("bare cr in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", 400),
    ("no host", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("version 1.10", b"GET / HTTP/1.10\r\nHost: h\r\n\r\n", 400),
    ("version 2.0", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 400),
    ("tls hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), 400),
    ("bad chunk size", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk without crlf", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400),
    ("connect", b"CONNECT example:443 HTTP/1.1\r\nHost: example:443\r\n\r\n", 405),
    ("upgrade with a body", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
     b"Content-Length: 5\r\n\r\nGET /", 400),
    ("upgrade with a chunked body", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: ws\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("http/1.0 upgrade", b"GET / HTTP/1.0\r\nConnection: upgrade, keep-alive\r\nUpgrade: x\r\n\r\n", 400),
    ("huge header", b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ("many headers", b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-A: 0123456789\r\n" * 1200 + b"\r\n", 431),
]


# h11 merges identical Content-Length duplicates before lb can see them, which
# RFC 9110 8.6 allows; llhttp refuses them. The merged value is unambiguous.
H11_MERGES = {"two equal cl"}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", ["whole", "odd"])
@pytest.mark.parametrize("name, data, status", REJECT, ids=[r[0] for r in REJECT])
def test_rejections(impl, split, name, data, status):
    if impl == "h11" and name in H11_MERGES:
        messages, _ = parse_requests(impl, data, split)
        assert messages[0]["head"].content_length == 3
        return
    with pytest.raises(HttpError) as info:
        parse_requests(impl, data, split)
    assert info.value.status == status


@pytest.mark.parametrize("impl", IMPLS)
def test_head_limit_counts_bytes_before_the_head_is_complete(impl):
    sink = Sink()
    parser = http1.PARSERS[impl][0](sink, 2048)
    with pytest.raises(HttpError) as info:
        for _ in range(100):
            parser.feed(b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100)
            parser.feed(b"a" * 100)
    assert info.value.status == 431


def parse_responses(impl, exchanges, split="whole"):
    """Feed responses one exchange at a time, as lb does (it never pipelines upstream)."""
    sink = Sink()
    parser = http1.PARSERS[impl][1](sink)
    for method, data in exchanges:
        parser.expect(method, False)
        for piece in pieces(data, split):
            parser.feed(piece)
    return sink.messages, parser


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", SPLITS)
def test_response_framings_in_sequence(impl, split):
    exchanges = [
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
        (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"),
        (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                 b"2\r\nhi\r\n0\r\n\r\n"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast"),
    ]
    messages, _ = parse_responses(impl, exchanges, split)
    assert [m["head"].status for m in messages] == [200, 200, 204, 304, 200, 200, 200, 200]
    assert [m["body"] for m in messages] == [b"abc", b"", b"", b"", b"hi", b"", b"", b"last"]
    assert all(m["ended"] for m in messages)
    assert messages[1]["head"].content_length == 99
    assert messages[4]["head"].chunked and names(messages[4]["head"]) == []


@pytest.mark.parametrize("impl", IMPLS)
def test_interim_100_then_final(impl):
    messages, _ = parse_responses(impl, [(
        b"POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")])
    assert [m["head"].status for m in messages] == [100, 201]
    assert messages[1]["body"] == b"ok"


@pytest.mark.parametrize("impl", IMPLS)
def test_switching_protocols_leaves_the_rest(impl):
    sink = Sink()
    parser = http1.PARSERS[impl][1](sink)
    parser.expect(b"GET", True)
    parser.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: x\r\n\r\n\x81\x02hi")
    head = sink.messages[0]["head"]
    assert head.status == 101 and head.upgrade == b"websocket"
    assert parser.leftover == b"\x81\x02hi"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
])
def test_bad_responses_are_502(impl, data):
    with pytest.raises(HttpError) as info:
        parse_responses(impl, [(b"GET", data)])
    assert info.value.status == 502


def test_serialize_request_rebuilds_the_head():
    messages, _ = parse_requests("httptools", b"POST /p HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n"
                                 b"Transfer-Encoding: chunked\r\nVia: 1.0 a\r\n\r\n0\r\n\r\n")
    out = http1.serialize_request(messages[0]["head"], b"10.1.2.3", [(b"X-Extra", b"e")])
    assert out == (b"POST /p HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n"
                   b"X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
                   b"Forwarded: for=10.1.2.3;host=h;proto=http\r\n"
                   b"Via: 1.0 a, 1.1 lb\r\nX-Extra: e\r\n\r\n")


SPOOFED = (b"GET / HTTP/1.1\r\nHost: app.example:8080\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n"
           b"X-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /evil\r\n\r\n")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("trusted, xff, forwarded", [
    (False, b"X-Forwarded-For: ::1\r\n", b'Forwarded: for="[::1]";host="app.example:8080";proto=http\r\n'),
    (True, b"X-Forwarded-For: 6.6.6.6, ::1\r\n",
     b'Forwarded: for=6.6.6.6, for="[::1]";host="app.example:8080";proto=http\r\n'),
])
def test_forwarding_headers_are_lbs_own_unless_a_trusted_proxy_sent_them(impl, trusted, xff, forwarded):
    messages, _ = parse_requests(impl, SPOOFED)
    out = http1.serialize_request(messages[0]["head"], b"::1", [], trusted)
    assert xff in out and forwarded in out
    for spoofed in (b"X-Real-IP", b"X-Forwarded-Port", b"X-Forwarded-Prefix", b"/evil"):
        assert spoofed not in out


@pytest.mark.parametrize("chain, peer, expected", [
    (None, b"10.0.0.5", b"10.0.0.5"),                              # not behind a proxy
    (b"1.2.3.4", b"10.0.0.5", b"1.2.3.4"),                         # behind a trusted balancer
    (b"6.6.6.6, 1.2.3.4", b"10.0.0.5", b"1.2.3.4"),                # the client's own claim is ignored
    (b"1.2.3.4, 10.0.0.7", b"10.0.0.5", b"1.2.3.4"),               # two trusted hops
    (b"10.0.0.9", b"10.0.0.5", b"10.0.0.9"),                       # all trusted: the leftmost
])
def test_the_client_address_is_the_rightmost_untrusted(chain, peer, expected):
    assert http1.client_address(chain, peer, lambda a: a.startswith(b"10.")) == expected


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("target, host, ok", [
    (b"/p", b"a.example", True),
    (b"http://a.example/p", b"a.example", True),
    (b"http://A.example:80/p", b"a.example:80", True),
    (b"http://b.example/p", b"a.example", False),                  # authority is not the Host
    (b"http://user@a.example/p", b"a.example", False),
    (b"@evil/x", b"a.example", False),
    (b"!", b"a.example", False),
    (b"/p", b"a b", False),
    (b"/p", b"a.example:80:80", False),
    (b"/p", b"[::1]:8080", True),
    (b"/p", b"a/b", False),
])
def test_host_and_absolute_form(impl, target, host, ok):
    data = b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    if ok:
        messages, _ = parse_requests(impl, data)
        assert messages[0]["head"].host == host
    else:
        with pytest.raises(HttpError) as info:
            parse_requests(impl, data)
        assert info.value.status == 400


def test_chunk_framing():
    assert http1.chunk(b"hello") == b"5\r\nhello\r\n"
    assert http1.chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert http1.chunk(b"") == b""          # not the last chunk: an empty piece sends nothing


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", SPLITS)
def test_empty_lines_between_requests_are_ignored(impl, split):
    # RFC 9112 2.2; llhttp does it, h11 alone answered 400 (found by the differential test).
    data = b"\r\nGET /1 HTTP/1.1\r\nHost: h\r\n\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    messages, _ = parse_requests(impl, data, split)
    assert [m["head"].target for m in messages] == [b"/1", b"/2"]


@pytest.mark.parametrize("impl", IMPLS)
def test_an_upgrade_header_without_connection_upgrade_is_a_plain_request(impl):
    # h11 alone waited for a protocol switch and buffered what followed without bound.
    data = b"GET /1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    messages, parser = parse_requests(impl, data)
    assert [m["head"].target for m in messages] == [b"/1", b"/2"]
    assert messages[0]["head"].upgrade is None and parser.leftover == b""


# -- what one peer can make a parser hold (hardening) ------------------------------------

def feed_in_pieces(parser, data: bytes, size: int = 4096) -> None:
    for i in range(0, len(data), size):
        parser.feed(data[i:i + size])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("trailer", [b"X-T: aaaaaaaa\r\n" * 5000, b"X-T: " + b"a" * 100000])
def test_a_trailer_flood_is_431(impl, trailer):
    sink = Sink()
    parser = http1.PARSERS[impl][0](sink, 16384)
    with pytest.raises(HttpError) as info:
        feed_in_pieces(parser, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"5\r\nhello\r\n0\r\n" + trailer)
    assert info.value.status == 431


@pytest.mark.parametrize("impl", IMPLS)
def test_a_few_trailers_are_fine_and_not_forwarded(impl):
    data = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n")
    messages, _ = parse_requests(impl, data, "odd")
    assert messages[0]["body"] == b"hello" and messages[0]["ended"]
    assert b"x-checksum" not in names(messages[0]["head"])


@pytest.mark.parametrize("impl", IMPLS)
def test_an_endless_chunk_size_line_is_431(impl):
    sink = Sink()
    parser = http1.PARSERS[impl][0](sink, 16384)
    with pytest.raises(HttpError) as info:
        feed_in_pieces(parser, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"5;ext=" + b"x" * 100000)
    assert info.value.status in (400, 431)          # h11 bounds the line itself


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("count, status", [(100, None), (101, 431)])
def test_header_count_limit(impl, count, status):
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(count - 1)) + b"\r\n"
    if status is None:
        messages, _ = parse_requests(impl, data, "odd")
        assert len(messages[0]["head"].headers) == count - 1
    else:
        with pytest.raises(HttpError) as info:
            parse_requests(impl, data, "odd")
        assert info.value.status == status


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("length, status", [(8192, None), (8193, 414), (20000, 414)])
def test_target_length_limit(impl, length, status):
    target = b"/" + b"a" * (length - 1)
    data = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    if status is None:
        messages, _ = parse_requests(impl, data, "odd")
        assert messages[0]["head"].target == target
    else:
        with pytest.raises(HttpError) as info:
            parse_requests(impl, data, "odd")
        assert info.value.status == status


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("piece", [175000, 4096, 37])
def test_many_small_pipelined_requests_are_not_one_big_head(impl, piece):
    # Only the bytes of the head being parsed count: 5,000 GETs in one write are 5,000 heads.
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 5000
    sink = Sink()
    parser = http1.PARSERS[impl][0](sink, 16384)
    feed_in_pieces(parser, data, piece)
    assert len(sink.messages) == 5000 and all(m["ended"] for m in sink.messages)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-A: 0123456789\r\n" * 5000,
])
@pytest.mark.parametrize("piece", [4096, 1 << 20])
def test_a_response_head_over_the_limit_is_502(impl, head, piece):
    sink = Sink()
    parser = http1.PARSERS[impl][1](sink, 65536)
    parser.expect(b"GET", False)
    with pytest.raises(HttpError) as info:
        feed_in_pieces(parser, head + b"Content-Length: 0\r\n\r\n", piece)
    assert info.value.status == 502


@pytest.mark.parametrize("impl", IMPLS)
def test_a_response_head_under_the_limit_is_fine(impl):
    sink = Sink()
    parser = http1.PARSERS[impl][1](sink, 65536)
    parser.expect(b"GET", False)
    feed_in_pieces(parser, b"HTTP/1.1 200 OK\r\n" + b"X-A: 0123456789\r\n" * 2000 + b"Content-Length: 0\r\n\r\n")
    assert sink.messages[0]["ended"] and len(sink.messages[0]["head"].headers) == 2000


_PAD = b"X-Pad: " + b"p" * 1000 + b"\r\n"
REFUSED = [
    ("request head", b"GET / HTTP/1.1\r\nHost: h\r\n" + _PAD * 20, 431),
    ("request trailers", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + _PAD * 20, 431),
    ("request with a bad byte", b"GET / HTTP/1.1\r\nHost: h\r\n" + _PAD * 10 + b"X\x01: y\r\n\r\n", 400),
    ("response head", b"HTTP/1.1 200 OK\r\n" + _PAD * 70, 502),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case, data, status", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_refused_message_is_freed_without_the_cyclic_gc(impl, case, data, status):
    """A peer that sends bad or oversized messages again and again must not make lb hold each
    one until the cyclic GC's oldest generation runs (llhttp's parser and lb's refer to each
    other; an error raised inside an except block ties the bytes fed to the traceback)."""
    import gc
    import tracemalloc

    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            if case.startswith("request"):
                parser = http1.PARSERS[impl][0](Sink(), 16384, 1000)
            else:
                parser = http1.PARSERS[impl][1](Sink(), 65536)
                parser.expect(b"GET", False)
            with pytest.raises(HttpError) as info:
                for i in range(0, len(data), 4096):
                    parser.feed(data[i:i + 4096])
            assert info.value.status == status
            del parser, info
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held < 200_000, f"{held} bytes still held after 20 refused messages of {len(data)} bytes"


# -- fast paths against the general ones: the same result, field for field ------------------

FAST_REQUESTS = [
    (b"GET", b"/", b"1.1", [(b"Host", b"127.0.0.1:8080")]),
    (b"GET", b"/a?b=c", b"1.0", [(b"Host", b"example.com")]),
    (b"POST", b"/x", b"1.1", [(b"Host", b" a.example "), (b"Accept", b"*/*"), (b"Cookie", b"lb_version=v1")]),
    (b"HEAD", b"http://a.example/x", b"1.1", [(b"host", b"a.example"), (b"X_Weird", b"dropped")]),
    (b"OPTIONS", b"*", b"1.1", [(b"HOST", b"[::1]:80"), (b"User-Agent", b"wrk")]),
    (b"GET", b"/", b"1.1", [(b"Host", b"a.example"), (b"Connection", b"close")]),
    (b"GET", b"/", b"1.1", [(b"Connection", b"Keep-Alive"), (b"Host", b"a.example"), (b"Accept", b"*/*")]),
    (b"GET", b"/", b"1.0", [(b"Host", b"a.example"), (b"Connection", b"keep-alive")]),
    (b"GET", b"/", b"1.0", [(b"Host", b"a.example"), (b"Connection", b"close")]),
    (b"GET", b"/", b"1.1", [(b"Host", b"a.example"), (b"Connection", b"upgrade")]),
]


def head_fields(head) -> dict:
    return {name: getattr(head, name) for name in http1.RequestHead.__slots__}


@pytest.mark.parametrize("method, target, version, raw", FAST_REQUESTS)
def test_the_host_only_request_path_gives_the_general_paths_head(method, target, version, raw):
    fast = http1.analyze_request(method, target, version, list(raw))
    kept, specials = heads._split_headers(list(raw), heads._REQUEST_SPECIAL)
    assert set(specials) <= {b"host", b"connection"}                    # it took the fast path
    general = heads._analyze_request(method, target, version, kept, specials)
    assert head_fields(fast) == head_fields(general)


@pytest.mark.parametrize("raw", [[(b"Host", b"bad host")], [(b"Host", b"a.example")]])
def test_the_host_only_path_checks_the_host_as_the_general_one(raw):
    target = b"http://other.example/"
    with pytest.raises(HttpError) as fast:
        http1.analyze_request(b"GET", target, b"1.1", raw)
    kept, specials = heads._split_headers(raw, heads._REQUEST_SPECIAL)
    with pytest.raises(HttpError) as general:
        heads._analyze_request(b"GET", target, b"1.1", kept, specials)
    assert (fast.value.status, fast.value.message) == (general.value.status, general.value.message)


@pytest.mark.parametrize("proto", [b"http", b"https"])
@pytest.mark.parametrize("trusted, raw", [
    (False, [(b"Host", b"a.example")]),
    (False, [(b"Host", b"a.example"), (b"X-Forwarded-For", b"1.2.3.4")]),     # dropped: untrusted
    (True, [(b"Host", b"a.example"), (b"X-Forwarded-For", b"1.2.3.4")]),      # a chain: not cached
    (False, [(b"Host", b"a.example"), (b"Via", b"1.0 other")]),                # a chain: not cached
])
def test_lb_own_lines_made_once_per_connection_are_the_lines_made_per_request(trusted, raw, proto):
    from lb.proxy.client import ClientConnection

    class Conn:                                           # what own_headers uses of a connection
        ip, _own = b"10.0.0.7", None
    conn = Conn()
    conn.trusted, conn.proto = trusted, proto
    for version in (b"1.1", b"1.1", b"1.0"):
        head = http1.analyze_request(b"GET", b"/", version, list(raw))
        cached = http1.serialize_request(head, conn.ip, [], trusted, own=ClientConnection.own_headers(conn, head))
        assert cached == http1.serialize_request(head, conn.ip, [], trusted, proto=proto)
        assert b"\r\nX-Forwarded-Proto: " + proto + b"\r\n" in cached and b";proto=" + proto + b"\r\n" in cached


@pytest.mark.parametrize("impl", IMPLS)
def test_an_upgrade_to_h2c_is_served_as_http_1_1_and_not_passed_on(impl):
    data = (b"GET /1 HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    messages, parser = parse_requests(impl, data)
    assert [m["head"].target for m in messages] == [b"/1", b"/2"]
    first = messages[0]["head"]
    assert first.upgrade is None and parser.leftover == b""
    assert [name.lower() for name, _ in first.headers] == []      # Upgrade and HTTP2-Settings went
