"""The two parsers against each other (hypothesis): for any request built from tricky pieces,
httptools and h11 either refuse it with the same status or agree on every framing decision."""

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lb.core import http1
from lb.core.errors import HttpError

from test_http1 import Sink

HEADERS = [
    b"Host: a", b"Host: b", b"Content-Length: 5", b"Content-Length: 3", b"Content-Length: 5, 5",
    b"Content-Length: +5", b"Content-Length: 0", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: xchunked", b"Transfer-Encoding: identity", b"Connection: close",
    b"Connection: keep-alive", b"Connection: upgrade", b"Upgrade: websocket", b"Expect: 100-continue",
    b"Transfer_Encoding: chunked", b"X-A: 1", b"Via: 1.1 p", b"X-Forwarded-For: 1.2.3.4",
    b"Proxy-Connection: keep-alive", b"Keep-Alive: timeout=5", b"TE: trailers",
]
BODIES = [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n", b"0\r\n\r\n", b"abc"]


def outcome(impl, data):
    """(the first request as parsed, or None; the status it was refused with, or None)."""
    sink = Sink()
    parser = http1.PARSERS[impl][0](sink, 16384)
    refused = None
    try:
        parser.feed(data)
    except HttpError as exc:
        refused = exc.status
    first = sink.messages[0] if sink.messages and sink.messages[0]["ended"] else None
    if first is None:
        return None, refused
    head = first["head"]
    if not head.keep_alive:
        refused = None          # the connection ends after this request: what follows is not read
    return (head.method, head.target, head.version, sorted(head.headers), head.host, head.content_length,
            head.chunked, head.keep_alive, head.upgrade, head.expect_continue, first["body"]), refused


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT"]),
       version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
       headers=st.lists(st.sampled_from(HEADERS), max_size=5),
       body=st.sampled_from(BODIES))
def test_both_parsers_make_the_same_framing_decisions(method, version, headers, body):
    # The one known difference (test_http1.H11_MERGES): h11 merges identical Content-Length
    # values (two headers, or "5, 5" in one) before lb sees the headers; llhttp refuses them.
    lengths = [h for h in headers if h.startswith(b"Content-Length")]
    assume(len(lengths) == len(set(lengths)) and b"Content-Length: 5, 5" not in lengths)
    data = method + b" /p?q=1 " + version + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    fast, pure = outcome("httptools", data), outcome("h11", data)
    if fast != pure and fast[0] == pure[0] and None in (fast[1], pure[1]):
        # llhttp refuses a bad request line at its first bad byte, h11 only once the head
        # it belongs to has ended: end it, and judge again.
        fast, pure = outcome("httptools", data + b"\r\n\r\n"), outcome("h11", data + b"\r\n\r\n")
    assert fast == pure
