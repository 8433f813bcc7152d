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

from hpack.table import HeaderTable

from . import http1
from .errors import HttpError

PSEUDO_REQUEST = (b":method", b":scheme", b":authority", b":path")
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade"})
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")      # a field name, lowercase (RFC 9110 5.1)
_BAD_VALUE = re.compile(rb"[\r\n\x00]|^[ \t]|[ \t]$")
RESPONSE_DROPPED = CONNECTION_SPECIFIC | {b"content-length"}    # content-length is added from the head
SENSITIVE = frozenset({b"set-cookie", b"authorization", b"proxy-authorization"})
UNCACHED = SENSITIVE | {b"cookie"}     # per-user values: never kept in the caches below
_STATIC: dict = {}                     # HPACK's static table: (name, value) and name -> its index
for _index, _field in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC.setdefault(_field, _index)
    _STATIC.setdefault(_field[0], _index)
FIELD_CACHE_MAX = 4096                 # encoded fields kept (shared by every connection)
FIELD_CACHE_VALUE_MAX = 128            # longer values are encoded each time
_encoded: dict = {}


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
    checked = _checked
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
            if len(field[1]) <= FIELD_CACHE_VALUE_MAX and name not in UNCACHED:
                if len(checked) >= FIELD_CACHE_MAX:
                    checked.clear()
                checked[field] = kind
        if kind is _REGULAR:
            regular.append(field)
        elif kind is _COOKIE:
            cookies.append(field[1])
        elif kind is _HOST and b":authority" not in pseudo:
            regular.append(field)
        # _TE (trailers): HTTP/1.1 upstream has its own hop-by-hop TE
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


_REGULAR, _COOKIE, _TE, _HOST = "regular", "cookie", "te", "host"
_checked: dict = {}            # (name, value) -> its kind, for fields found valid (shared)


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


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) in a `prefix_bits` prefix, OR'ed with `flags`."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes((flags | value,))
    out = bytearray((flags | top,))
    value -= top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field, without touching any dynamic table: indexed if the static table has the
    pair, else a literal (never indexed for SENSITIVE names) naming the static entry when it
    has the name; no Huffman."""
    index = _STATIC.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)
    flags = 0x10 if name in SENSITIVE else 0x00
    index = _STATIC.get(name)
    if index is not None:
        return _integer(index, 4, flags) + _integer(len(value), 7, 0) + value
    return bytes((flags,)) + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value


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
            out.append(_integer(self._smallest, 5, 0x20))
            if self._size != self._smallest:
                out.append(_integer(self._size, 5, 0x20))
            self._smallest = None
        cache = _encoded
        for field in headers:
            encoded = cache.get(field)
            if encoded is None:
                encoded = encode_field(field[0], field[1])
                if len(field[1]) <= FIELD_CACHE_VALUE_MAX and field[0] not in UNCACHED:
                    if len(cache) >= FIELD_CACHE_MAX:
                        cache.clear()
                    cache[field] = encoded
            out.append(encoded)
        return b"".join(out)
