"""An HTTP/2 request's header list -> the RequestHead lb forwards as HTTP/1.1, and a
response's head -> the HTTP/2 header list. No I/O.

RFC 9113 section 8: a malformed request is a stream error (PROTOCOL_ERROR), never forwarded:
uppercase field names, connection-specific fields (Connection, Keep-Alive,
Proxy-Connection, Transfer-Encoding, Upgrade), TE other than "trailers", pseudo-header
fields unknown, repeated, after a regular field or missing, CR/LF/NUL or a leading or
trailing space in a value. h2's own header validation is off (lb/proxy/h2client.py) so that
these are stream errors, not connection errors. The request then goes through
http1.analyze_request like any HTTP/1.1 one: :authority becomes Host, the Cookie fields
(which HTTP/2 may split) are joined with "; " (section 8.2.3), and a request whose body is
not announced by content-length is forwarded chunked.
"""

from __future__ import annotations

import re

from . import http1
from .errors import HttpError

PSEUDO_REQUEST = (b":method", b":scheme", b":authority", b":path")
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade"})
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")      # a field name, lowercase (RFC 9110 5.1)
_BAD_VALUE = re.compile(rb"[\r\n\x00]|^[ \t]|[ \t]$")
RESPONSE_DROPPED = CONNECTION_SPECIFIC | {b"content-length"}    # content-length is added from the head


class StreamError(Exception):
    """A malformed request: the stream is reset with PROTOCOL_ERROR."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def request_head(fields: list, has_body: bool) -> http1.RequestHead:
    """The RequestHead of an HTTP/2 request. `has_body`: the HEADERS frame did not end the
    stream. Raises StreamError for a malformed request, HttpError for one lb refuses as it
    would over HTTP/1.1 (a bad Host, an unknown method...)."""
    pseudo: dict[bytes, bytes] = {}
    regular: list = []
    cookies: list = []
    for name, value in fields:
        if name[:1] == b":":
            if regular:
                raise StreamError(f"pseudo-header {name.decode('latin-1')} after a regular field")
            if name not in PSEUDO_REQUEST:
                raise StreamError(f"unknown pseudo-header {name[:30].decode('latin-1')}")
            if name in pseudo:
                raise StreamError(f"repeated pseudo-header {name.decode('latin-1')}")
            pseudo[name] = value
            continue
        if not _TOKEN.match(name):
            raise StreamError(f"invalid field name {name[:40]!r} (HTTP/2 names are lowercase tokens)")
        if _BAD_VALUE.search(value):
            raise StreamError(f"invalid value in field {name[:40].decode('latin-1')}")
        if name in CONNECTION_SPECIFIC:
            raise StreamError(f"connection-specific field {name.decode('latin-1')}")
        if name == b"te" and value.lower() != b"trailers":
            raise StreamError("te other than trailers")
        if name == b"cookie":
            cookies.append(value)
        elif name == b"te":
            continue                   # trailers: HTTP/1.1 upstream has its own hop-by-hop TE
        elif name != b"host" or b":authority" not in pseudo:
            regular.append((name, value))
    for name, value in pseudo.items():
        if _BAD_VALUE.search(value) or not value and name != b":authority":
            raise StreamError(f"invalid {name.decode('latin-1')}")
    method = pseudo.get(b":method")
    if method is None or b":scheme" not in pseudo or b":path" not in pseudo:
        if method == b"CONNECT":
            raise HttpError("CONNECT is not supported by this proxy", 405)
        raise StreamError("missing :method, :scheme or :path")
    authority = pseudo.get(b":authority")
    if authority is not None:
        regular.append((b"host", authority))
    if cookies:
        regular.append((b"cookie", b"; ".join(cookies)))
    if has_body and not any(name == b"content-length" for name, _ in regular):
        regular.append((b"transfer-encoding", b"chunked"))
    head = http1.analyze_request(method, pseudo[b":path"], b"1.1", regular)
    head.version = b"2"            # what Via says lb received; HTTP/1.1 goes upstream
    return head


def response_fields(status: int, headers: list, content_length: int | None, extra: list) -> list:
    """An HTTP/2 response header list from a backend's parsed head (end-to-end fields) and
    lb's own lines (`extra`, e.g. Set-Cookie): names lowercased, connection-specific fields
    dropped."""
    fields = [(b":status", b"%d" % status)]
    for name, value in headers:
        lower = name.lower()
        if lower not in RESPONSE_DROPPED:
            fields.append((lower, value))
    if content_length is not None:
        fields.append((b"content-length", b"%d" % content_length))
    for name, value in extra:
        fields.append((name.lower(), value))
    return fields
