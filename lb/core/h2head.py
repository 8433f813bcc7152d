"""An HTTP/2 request's header list -> the RequestHead lb forwards as HTTP/1.1, and a
response's head -> the HTTP/2 header list. No I/O.

RFC 9113 section 8: a malformed request is a stream error (PROTOCOL_ERROR), never forwarded:
uppercase field names, connection-specific fields (Connection, Keep-Alive,
Proxy-Connection, Transfer-Encoding, Upgrade), TE other than "trailers", pseudo-header
fields unknown, repeated, after a regular field or missing, CR/LF/NUL or a leading or
trailing space in a value. lb's connection (lb/core/http2/connection.py) leaves header lists
to this module, so that these are stream errors, not connection errors. The request then goes through
http1.analyze_request like any HTTP/1.1 one: :authority becomes Host, the Cookie fields
(which HTTP/2 may split) are joined with "; " (section 8.2.3). The HTTP/1.1 limits hold
too (limits.max_headers and max_header_bytes: 431, max_target_bytes: 414), and :path is
held to what an HTTP/1.1 request line can carry (400).

The body's framing upstream (`body_framing`) follows one rule: a content-length is written
upstream only when lb has the whole body before it writes the head, and it is then what the
DATA frames carried; otherwise the body goes chunked. The client's content-length is only a
promise, which lb holds the DATA to (a mismatch is malformed, RFC 9113 8.1.1): it never
frames bytes on a backend connection. A HEADERS frame that ends the stream with a non-zero
content-length is malformed (it once let the next stream's head be read as this body).
"""

from __future__ import annotations

import re

from . import http1
from .config import LimitsConfig
from .errors import HttpError
from .http2.hpack import STATIC_TABLE, encode_integer
from .memo import Memo

PSEUDO_REQUEST = (b":method", b":scheme", b":authority", b":path")
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade"})
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")      # a field name, lowercase (RFC 9110 5.1)
_BAD_VALUE = re.compile(rb"[\r\n\x00]|^[ \t]|[ \t]$")
RESPONSE_DROPPED = CONNECTION_SPECIFIC | {b"content-length"}    # content-length is added from the head
SENSITIVE = frozenset({b"set-cookie", b"authorization", b"proxy-authorization"})
UNCACHED = SENSITIVE | {b"cookie"}     # per-user values: never kept in the caches below
_STATIC: dict = {}                     # HPACK's static table: (name, value) and name -> its index
for _index, _field in enumerate(STATIC_TABLE, 1):
    _STATIC.setdefault(_field, _index)
    _STATIC.setdefault(_field[0], _index)
FIELD_CACHE_MAX = 4096                 # fields kept (per memo, shared by every connection)
FIELD_CACHE_ENTRY_MAX = 192            # a longer name and value are checked or encoded each time
_encoded = Memo(FIELD_CACHE_MAX, 1024 * 1024, 2 * FIELD_CACHE_ENTRY_MAX)    # a response field -> its HPACK bytes


class StreamError(Exception):
    """A malformed request: the stream is reset with PROTOCOL_ERROR."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def request_head(fields: list, has_body: bool, limits: LimitsConfig = LimitsConfig()) -> http1.RequestHead:
    """The RequestHead of an HTTP/2 request, its content_length the client's (a promise, see
    body_framing). `has_body`: the HEADERS frame did not end the stream; `limits`: the
    config's. Raises StreamError for a malformed request, HttpError for one lb refuses as it
    would over HTTP/1.1 (a bad Host, an unknown method, 414, 431...)."""
    pseudo: dict[bytes, bytes] = {}
    regular: list = []
    cookies: list = []
    checked = _checked
    remember = checked.put
    seen_regular = False
    for field in fields:
        name = field[0]
        if name[:1] == b":":
            if seen_regular:
                raise StreamError(f"pseudo-header {name.decode('latin-1')} after a regular field")
            if name not in PSEUDO_REQUEST:
                raise StreamError(f"unknown pseudo-header {name[:30].decode('latin-1')}")
            if name in pseudo:
                raise StreamError(f"repeated pseudo-header {name.decode('latin-1')}")
            pseudo[name] = field[1]
            continue
        seen_regular = True
        kind = checked.get(field)
        if kind is None:
            kind = _check_field(name, field[1])
            if name not in UNCACHED:
                remember(field, kind, len(name) + len(field[1]))
        if kind is _REGULAR:
            regular.append(field)
        elif kind is _COOKIE:
            cookies.append(field[1])
        elif kind is _HOST and b":authority" not in pseudo:
            regular.append(field)
        # _TE (trailers): HTTP/1.1 upstream has its own hop-by-hop TE
    for field in pseudo.items():
        if checked.get(field) is not _PSEUDO:       # a value seen valid before: not searched again
            name, value = field
            if _BAD_VALUE.search(value) or not value and name != b":authority":
                raise StreamError(f"invalid {name.decode('latin-1')}")
            if name != b":path":                     # paths vary; the others repeat
                remember(field, _PSEUDO, len(name) + len(value))
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
    path = pseudo[b":path"]
    _check_limits(path, regular, limits)
    head = http1.analyze_request(method, path, b"1.1", regular)
    if not head.host:
        raise StreamError("no authority (an empty or missing :authority and Host)")
    if not has_body and head.content_length:
        raise StreamError("content-length with no DATA (END_STREAM on HEADERS)")
    head.version = b"2"            # what Via says lb received; HTTP/1.1 goes upstream
    return head


def _check_limits(path: bytes, regular: list, limits) -> None:
    """limits.max_target_bytes (414), max_headers and max_header_bytes (431) as over HTTP/1.1,
    on the head an HTTP/1.1 request would carry; :path as a request line's target (400)."""
    http1.check_target(path, limits.max_target_bytes)
    if path[:1] != b"/" and path != b"*":
        raise HttpError(f"malformed request target: {path[:60]!r} (origin-form or *)", 400)
    http1.check_target_grammar(path)
    http1.check_header_count(len(regular), limits.max_headers)
    http1.check_head_size(path, regular, limits.max_header_bytes)


def body_framing(declared: int | None, received: int, ended: bool) -> tuple[int | None, bool]:
    """(content_length, chunked) of a request body as written upstream, decided when the head
    is written: `received` bytes of DATA so far, `ended` if END_STREAM came with them,
    `declared` the client's content-length. Raises StreamError when the DATA already broke
    the promise."""
    if declared is not None and (received > declared or ended and received != declared):
        raise StreamError(f"{received} bytes of DATA for content-length {declared}")
    if ended:
        return received, False
    return None, True


_REGULAR, _COOKIE, _TE, _HOST, _PSEUDO = "regular", "cookie", "te", "host", "pseudo"
_checked = Memo(FIELD_CACHE_MAX, 512 * 1024, FIELD_CACHE_ENTRY_MAX)   # a field found valid -> its kind


def _check_field(name: bytes, value: bytes) -> str:
    """A regular field's kind, or StreamError if HTTP/2 does not allow it."""
    if not _TOKEN.match(name):
        raise StreamError(f"invalid field name {name[:40]!r} (HTTP/2 names are lowercase tokens)")
    if _BAD_VALUE.search(value):
        raise StreamError(f"invalid value in field {name[:40].decode('latin-1')}")
    if name in CONNECTION_SPECIFIC:
        raise StreamError(f"connection-specific field {name.decode('latin-1')}")
    if name == b"te":
        if value.lower() != b"trailers":
            raise StreamError("te other than trailers")
        return _TE
    return _COOKIE if name == b"cookie" else _HOST if name == b"host" else _REGULAR


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


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field, without touching any dynamic table: indexed if the static table has the
    pair, else a literal (never indexed for SENSITIVE names) naming the static entry when it
    has the name; no Huffman."""
    index = _STATIC.get((name, value))
    if index is not None:
        return encode_integer(index, 7, 0x80)
    flags = 0x10 if name in SENSITIVE else 0x00
    index = _STATIC.get(name)
    if index is not None:
        return encode_integer(index, 4, flags) + encode_integer(len(value), 7, 0) + value
    return bytes((flags,)) + encode_integer(len(name), 7, 0) + name + encode_integer(len(value), 7, 0) + value


class ResponseEncoder:
    """The HPACK encoder of lb's HTTP/2 responses, in place of h2's (hpack.Encoder): it never
    adds to the dynamic table, so a field encodes the same on every connection and its bytes
    are kept (FIELD_CACHE_MAX of them, shared). h2's encoder searched and grew the dynamic
    table and Huffman-coded every value: 9 µs of the ~28 µs h2 spent sending a small response.
    The client's SETTINGS_HEADER_TABLE_SIZE is honoured as RFC 7541 4.2 asks: the smallest
    size since the last block, then the last one, are signalled at the next block's start."""

    __slots__ = ("_size", "_smallest")

    def __init__(self) -> None:
        self._size = 4096
        self._smallest: int | None = None

    @property
    def header_table_size(self) -> int:
        return self._size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._size = value
        if self._smallest is None or value < self._smallest:
            self._smallest = value

    def encode(self, headers, huffman: bool = True) -> bytes:
        out = []
        if self._smallest is not None:
            out.append(encode_integer(self._smallest, 5, 0x20))
            if self._size != self._smallest:
                out.append(encode_integer(self._size, 5, 0x20))
            self._smallest = None
        cache = _encoded
        lookup = cache.get
        for field in headers:
            encoded = lookup(field)
            if encoded is None:
                encoded = encode_field(field[0], field[1])
                if field[0] not in UNCACHED:
                    cache.put(field, encoded, len(field[0]) + len(field[1]) + len(encoded))
            out.append(encoded)
        return b"".join(out)
