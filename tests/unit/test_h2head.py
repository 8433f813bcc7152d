"""h2head: an HTTP/2 request's header list -> the HTTP/1.1 RequestHead lb forwards, every
malformation a stream error (RFC 9113 section 8); a response head -> HTTP/2 fields."""

import pytest

from lb.core import http1
from lb.core.errors import HttpError
from lb.core.h2head import StreamError, request_head, response_fields

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"shop.example"), (b":path", b"/a?b=1")]


def test_a_request_becomes_the_head_an_http_1_1_request_would_give():
    head = request_head(BASE + [(b"accept", b"*/*"), (b"cookie", b"a=1"), (b"x-a", b"1"), (b"cookie", b"lb_version=v2")],
                        has_body=False)
    assert (head.method, head.target, head.host, head.version) == (b"GET", b"/a?b=1", b"shop.example", b"2")
    assert (b"cookie", b"a=1; lb_version=v2") in head.headers          # split cookies joined (8.2.3)
    assert not head.chunked and head.content_length is None and not head.has_body
    upstream = http1.serialize_request(head, b"10.0.0.1", [])
    assert upstream.startswith(b"GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\n") and b"Via: 2 lb\r\n" in upstream


@pytest.mark.parametrize("extra, has_body, chunked, length", [
    ([], True, True, None),                                 # a body without content-length: chunked upstream
    ([(b"content-length", b"5")], True, False, 5),
    ([(b"content-length", b"0")], False, False, 0),
    ([], False, False, None),
])
def test_the_body_is_framed_for_http_1_1(extra, has_body, chunked, length):
    head = request_head(BASE + extra, has_body)
    assert (head.chunked, head.content_length) == (chunked, length)


def test_te_trailers_is_allowed_and_not_sent_on_and_host_gives_way_to_authority():
    head = request_head(BASE + [(b"te", b"trailers"), (b"host", b"other.example")], has_body=False)
    assert head.host == b"shop.example" and all(name not in (b"te", b"host") for name, _ in head.headers)


@pytest.mark.parametrize("fields, why", [
    (BASE + [(b"X-Upper", b"1")], "invalid field name"),
    (BASE + [(b"connection", b"close")], "connection-specific"),
    (BASE + [(b"keep-alive", b"5")], "connection-specific"),
    (BASE + [(b"proxy-connection", b"x")], "connection-specific"),
    (BASE + [(b"transfer-encoding", b"chunked")], "connection-specific"),
    (BASE + [(b"upgrade", b"websocket")], "connection-specific"),
    (BASE + [(b"te", b"gzip")], "te other than trailers"),
    (BASE + [(b"x-a", b"1\r\nx-b: 2")], "invalid value"),
    (BASE + [(b"x-a", b"1\n")], "invalid value"),
    (BASE + [(b"x-a", b"1\x00")], "invalid value"),
    (BASE + [(b"x-a", b" 1")], "invalid value"),
    (BASE + [(b"x a", b"1")], "invalid field name"),
    ([BASE[0], (b"x-a", b"1"), *BASE[1:]], "after a regular field"),
    (BASE[:1] + BASE, "repeated pseudo-header"),
    (BASE[:3], "missing"),
    (BASE[1:], "missing"),
    ([*BASE[:3], (b":protocol", b"websocket"), BASE[3]], "unknown pseudo-header"),
    ([*BASE[:3], (b":status", b"200"), BASE[3]], "unknown pseudo-header"),
    ([*BASE[:3], (b":path", b"")], "invalid :path"),
    ([BASE[0], BASE[1], (b":authority", b"a\r\nb"), BASE[3]], "invalid :authority"),
])
def test_a_malformed_request_is_a_stream_error(fields, why):
    with pytest.raises(StreamError) as error:
        request_head(fields, has_body=False)
    assert why in error.value.message


@pytest.mark.parametrize("fields, status", [
    ([(b":method", b"CONNECT"), (b":authority", b"a:443")], 405),
    ([(b":method", b"BREW"), *BASE[1:]], 400),
    ([BASE[0], BASE[1], (b":authority", b"bad host!"), BASE[3]], 400),
])
def test_what_lb_refuses_over_http_1_1_it_refuses_over_http_2(fields, status):
    with pytest.raises(HttpError) as error:
        request_head(fields, has_body=False)
    assert error.value.status == status


def test_response_fields_are_lowercase_without_connection_specific_ones():
    fields = response_fields(200, [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked"),
                                   (b"Keep-Alive", b"5"), (b"Content-Length", b"99"), (b"X-App", b"1")],
                             12, [(b"Set-Cookie", b"lb_version=v1")])
    assert fields == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-app", b"1"),
                      (b"content-length", b"12"), (b"set-cookie", b"lb_version=v1")]
