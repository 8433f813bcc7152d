"""h2head: an HTTP/2 request's header list -> the HTTP/1.1 RequestHead lb forwards, every
malformation a stream error (RFC 9113 section 8); a response head -> HTTP/2 fields."""

import pytest

from lb.core import http1
from lb.core.errors import HttpError
import hpack
from hypothesis import given
from hypothesis import strategies as st

from lb.core import h2head
from lb.core.h2head import ResponseEncoder, StreamError, encode_field, request_head, response_fields

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


def test_a_field_before_pseudo_headers_is_caught_whatever_its_kind_and_a_valid_field_seen_before():
    for regular in [(b"te", b"trailers"), (b"host", b"a.example"), (b"cookie", b"a=1"), (b"x-a", b"1")]:
        request_head(BASE + [regular], has_body=False)                  # valid, and remembered as such
        with pytest.raises(StreamError, match="after a regular field"):
            request_head([BASE[0], regular, *BASE[1:]], has_body=False)


def test_an_invalid_field_stays_invalid_when_asked_again():
    for _ in range(3):
        with pytest.raises(StreamError):
            request_head(BASE + [(b"x-a", b"1\r\n")], has_body=False)


@pytest.mark.parametrize("name, value, encoded", [
    (b":status", b"200", b"\x88"),                                  # the static table's pair: indexed
    (b":status", b"404", b"\x8d"),
    (b":status", b"418", b"\x08\x03418"),                           # the static name, a literal value
    (b"content-type", b"text/plain", b"\x0f\x10\x0atext/plain"),    # name index 31 = 15 + 16
    (b"set-cookie", b"a=1", b"\x1f\x28\x03a=1"),                    # sensitive: never indexed (0x10)
    (b"x-app", b"1", b"\x00\x05x-app\x011"),                        # a new name, no indexing
    (b"x-app", b"v" * 127, b"\x00\x05x-app\x7f\x00" + b"v" * 127),    # 127 = 7-bit prefix full, then 0
])
def test_a_field_encodes_without_the_dynamic_table(name, value, encoded):
    assert encode_field(name, value) == encoded
    decoded = hpack.Decoder().decode(encoded, raw=True)
    assert decoded == [(name, value)]
    assert isinstance(decoded[0], hpack.NeverIndexedHeaderTuple) == (name == b"set-cookie")


_names = st.binary(min_size=1, max_size=300).map(lambda b: b.lower().replace(b":", b"x"))


@given(st.lists(st.tuples(st.sampled_from([b":status", b"date", b"server", b"set-cookie"]) | _names,
                          st.binary(max_size=400)), max_size=12))
def test_any_header_list_round_trips_through_a_decoder_and_leaves_its_table_empty(fields):
    decoder = hpack.Decoder()
    encoder = ResponseEncoder()
    for _ in range(2):                     # the second time, from the cache
        assert [tuple(f) for f in decoder.decode(encoder.encode(fields), raw=True)] == fields
    assert len(decoder.header_table.dynamic_entries) == 0


def test_a_smaller_table_size_is_signalled_at_the_next_block_only():
    decoder, encoder = hpack.Decoder(), ResponseEncoder()
    encoder.header_table_size = 0
    encoder.header_table_size = 1000
    block = encoder.encode([(b":status", b"200")])
    assert block == b"\x20\x3f\xc9\x07\x88"                       # size 0, then 1000, then :status 200
    assert decoder.decode(block, raw=True) == [(b":status", b"200")] and decoder.header_table_size == 1000
    assert encoder.encode([(b":status", b"200")]) == b"\x88"


def test_the_field_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(h2head, "_encoded", {})
    encoder = ResponseEncoder()
    for i in range(h2head.FIELD_CACHE_MAX + 10):
        encoder.encode([(b"x-n", b"%d" % i)])
    encoder.encode([(b"x-big", b"v" * (h2head.FIELD_CACHE_VALUE_MAX + 1))])
    assert 0 < len(h2head._encoded) <= h2head.FIELD_CACHE_MAX
    assert (b"x-big", b"v" * (h2head.FIELD_CACHE_VALUE_MAX + 1)) not in h2head._encoded


def test_per_user_values_are_never_kept_in_the_caches(monkeypatch):
    monkeypatch.setattr(h2head, "_encoded", {})
    monkeypatch.setattr(h2head, "_checked", {})
    ResponseEncoder().encode([(b"set-cookie", b"session=secret"), (b"x-app", b"1")])
    request_head(BASE + [(b"cookie", b"session=secret"), (b"authorization", b"Bearer t"), (b"x-a", b"1")],
                 has_body=False)
    assert list(h2head._encoded) == [(b"x-app", b"1")]
    assert list(h2head._checked) == [(b"x-a", b"1")]
