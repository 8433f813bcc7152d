"""h2head: an HTTP/2 request's header list -> the HTTP/1.1 RequestHead lb forwards, every
malformation a stream error (RFC 9113 section 8); a response head -> HTTP/2 fields."""

import pytest

from lb.core import http1
from lb.core.errors import HttpError
import hpack
from hypothesis import given
from hypothesis import strategies as st

from lb.core import h2head
from lb.core.config import LimitsConfig
from test_http1 import parse_requests
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


@pytest.mark.parametrize("extra, has_body, length", [
    ([], True, None),
    ([(b"content-length", b"5")], True, 5),                 # the client's promise, not yet the framing
    ([(b"content-length", b"0")], False, 0),
    ([(b"content-length", b"0")], True, 0),
    ([], False, None),
])
def test_the_declared_length_is_kept_and_nothing_is_framed_yet(extra, has_body, length):
    head = request_head(BASE + extra, has_body)
    assert (head.chunked, head.content_length) == (False, length)


@pytest.mark.parametrize("length", [b"1", b"5", b"100"])
def test_a_content_length_on_headers_that_end_the_stream_is_malformed(length):
    """The smuggling hole of issue 25: forwarded as Content-Length: N with no body, it let the
    backend read the next request on the pooled connection as this one's body."""
    with pytest.raises(StreamError, match="END_STREAM"):
        request_head(BASE + [(b"content-length", length)], has_body=False)


@pytest.mark.parametrize("declared, received, ended, framing", [
    (None, 0, True, (0, False)),            # the whole body came with the head: its length
    (None, 7, True, (7, False)),
    (7, 7, True, (7, False)),
    (0, 0, True, (0, False)),
    (None, 3, False, (None, True)),         # not whole yet: chunked, whatever was promised
    (7, 3, False, (None, True)),
    (7, 0, False, (None, True)),
    (7, 7, False, (None, True)),            # all promised bytes, no END_STREAM yet
    (7, 8, False, StreamError),             # more than promised
    (7, 6, True, StreamError),              # ended short
    (0, 1, True, StreamError),
    (5, 6, True, StreamError),
])
def test_the_body_framing_upstream_is_what_the_data_carried_or_chunked(declared, received, ended, framing):
    if framing is StreamError:
        with pytest.raises(StreamError):
            h2head.body_framing(declared, received, ended)
    else:
        assert h2head.body_framing(declared, received, ended) == framing


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
    ([BASE[0], BASE[1], BASE[3]], 400),                                     # no authority at all
])
def test_what_lb_refuses_over_http_1_1_it_refuses_over_http_2(fields, status):
    with pytest.raises(HttpError) as error:
        request_head(fields, has_body=False)
    assert error.value.status == status


@pytest.mark.parametrize("fields", [
    [BASE[0], BASE[1], (b":authority", b""), BASE[3]],                      # empty :authority
    [BASE[0], BASE[1], (b":authority", b""), BASE[3], (b"host", b"a.example")],
    [BASE[0], BASE[1], BASE[3], (b"host", b"")],
])
def test_a_request_with_no_authority_is_malformed_never_an_empty_host(fields):
    with pytest.raises(StreamError, match="no authority"):
        request_head(fields, has_body=False)


SMALL = LimitsConfig(max_header_bytes=2048, max_headers=10, max_target_bytes=1024)


@pytest.mark.parametrize("fields, status", [
    (BASE[:3] + [(b":path", b"/" + b"a" * 1024)], 414),                     # max_target_bytes
    (BASE + [(b"x-%d" % i, b"1") for i in range(11)], 431),                 # max_headers
    (BASE + [(b"x-a", b"v" * 2048)], 431),                                  # max_header_bytes
    (BASE + [(b"x-" + b"n" * 2048, b"1")], 431),
    (BASE + [(b"cookie", b"c" * 600) for _ in range(4)], 431),              # cookies joined count too
])
def test_the_http_1_1_limits_answer_on_the_stream(fields, status):
    with pytest.raises(HttpError) as error:
        request_head(fields, has_body=False, limits=SMALL)
    assert error.value.status == status


def test_just_under_the_limits_passes():
    fields = BASE[:3] + [(b":path", b"/" + b"a" * 1023)] + [(b"x-%d" % i, b"1") for i in range(9)]
    request_head(fields, has_body=False, limits=SMALL)


# What an HTTP/1.1 request line cannot carry, and so neither may :path: SP, HTAB, CTL, DEL and
# bytes past ASCII (llhttp and h11 refuse each, checked below); other odd bytes pass both ways.
REFUSED_TARGETS = [b"/a b", b"/a\tb", b"/a\x01b", b"/a\x7fb", b"/a\x80b", b"/a HTTP/1.1", b"/\xff"]
PASSING_TARGETS = [b"/a\"b", b"/a{b}", b"/a|b", b"/a\\b", b"/a<b>", b"/%20?q=1#f"]


@pytest.mark.parametrize("target", REFUSED_TARGETS + PASSING_TARGETS)
def test_path_follows_the_request_line_grammar_of_both_http_1_1_parsers(target):
    refused = target in REFUSED_TARGETS
    for impl in ("httptools", "h11"):
        try:
            messages, _ = parse_requests(impl, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        except HttpError:
            messages = []
        assert (not messages) == refused, impl
    if refused:
        with pytest.raises(HttpError) as error:
            request_head(BASE[:3] + [(b":path", target)], has_body=False)
        assert error.value.status == 400
    else:
        assert request_head(BASE[:3] + [(b":path", target)], has_body=False).target == target


@pytest.mark.parametrize("path", [b"a", b"http://shop.example/a", b"x/y"])
def test_path_is_origin_form_or_an_asterisk(path):
    with pytest.raises(HttpError, match="origin-form"):
        request_head(BASE[:3] + [(b":path", path)], has_body=False)
    assert request_head([(b":method", b"OPTIONS"), *BASE[1:3], (b":path", b"*")], has_body=False).target == b"*"


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


def test_per_user_values_are_never_kept_in_the_caches():
    h2head._encoded.clear()
    h2head._checked.clear()
    ResponseEncoder().encode([(b"set-cookie", b"session=secret"), (b"x-app", b"1")])
    request_head(BASE + [(b"cookie", b"session=secret"), (b"authorization", b"Bearer t"), (b"x-a", b"1")],
                 has_body=False)
    assert list(h2head._encoded) == [(b"x-app", b"1")]
    assert [f for f in h2head._checked if not f[0].startswith(b":")] == [(b"x-a", b"1")]
    assert {f[0] for f in h2head._checked if f[0].startswith(b":")} == {b":method", b":scheme", b":authority"}
