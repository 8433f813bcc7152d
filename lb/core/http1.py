"""HTTP/1.1 message parsing behind one small interface, with two implementations.

Theory of operation
-------------------
A parser is fed bytes (`feed`) and calls back into a *sink* with whole heads and
body pieces; it does no I/O. Requests: `sink.on_request(head)`,
`sink.on_request_body(bytes)`, `sink.on_request_end()`. Responses: the same with
`response`. A response parser must be told what the next response answers
(`expect(method, upgrade)`) because HEAD and Upgrade change how it is framed.

Both implementations hand the raw (name, value) pairs to `analyze_request` /
`analyze_response`, which hold every framing and smuggling rule in one place:
conflicting Content-Length, Transfer-Encoding other than a single final
`chunked`, TE together with CL, a missing or doubled Host. They also strip the
hop-by-hop headers, so what reaches `serialize_*` is rebuilt from parsed fields,
never copied from the wire.

`httptools` (llhttp, C) is the fast path. `h11` is pure Python: it is slower
(~70 us a head) and more lenient (it accepts TE+CL, bare LF, obs-fold), which is
why its header list is never forwarded as-is but goes through the same analysis.
"""

from __future__ import annotations

import re
from http import HTTPStatus

import h11
import httptools

from .errors import HttpError
from .memo import Memo

# RFC 9110 7.6.1 hop-by-hop fields, plus the legacy Proxy-Connection.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})
# Request headers lb sets itself; a client's copy is dropped, never trusted.
REQUEST_OWNED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
                           b"x-real-ip", b"x-forwarded-port", b"x-forwarded-prefix"})
# A Host: a reg-name or IPv4 (RFC 3986 characters) or a bracketed IPv6, and a port.
_HOST_VALUE_RE = re.compile(rb"^(?:(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?$")
_ABSOLUTE_RE = re.compile(rb"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
# The methods llhttp knows (it refuses any other token); h11 accepts any token, so the
# shared analysis holds both to this list.
METHODS = frozenset(m.encode() for m in (
    "DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK "
    "BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE "
    "PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY").split())
# In a raw request head (h11 mode, which normalises these away before lb could see them):
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
REPLAY_LIMIT_BYTES = 64 * 1024
REQUEST_LINE_SLACK = 32          # a request line is its target plus a method and a version
MAX_CONTENT_LENGTH_DIGITS = 18


class RequestHead:
    """A parsed, validated request head. `headers` are end-to-end only."""

    __slots__ = ("method", "target", "version", "headers", "host", "content_length",
                 "chunked", "keep_alive", "upgrade", "expect_continue", "via", "forwarded_by")

    def __init__(self, method, target, version, headers, host, content_length,
                 chunked, keep_alive, upgrade, expect_continue, via, forwarded_by=None):
        self.method: bytes = method
        self.target: bytes = target
        self.version: bytes = version          # b"1.1" or b"1.0"
        self.headers: list = headers           # [(name, value)] without hop-by-hop
        self.host: bytes | None = host
        self.content_length: int | None = content_length
        self.chunked: bool = chunked
        self.keep_alive: bool = keep_alive     # the client wants the connection kept
        self.upgrade: bytes | None = upgrade   # the protocol asked for, e.g. b"websocket"
        self.expect_continue: bool = expect_continue
        self.via: bytes | None = via
        # (X-Forwarded-For, Forwarded) as the client sent them, or None: kept only when the
        # peer is a trusted proxy (trusted_proxies), dropped otherwise
        self.forwarded_by: tuple[bytes | None, bytes | None] | None = forwarded_by

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT_METHODS


class ResponseHead:
    """A parsed response head. `headers` are end-to-end only."""

    __slots__ = ("status", "reason", "version", "headers", "content_length", "chunked",
                 "keep_alive", "upgrade")

    def __init__(self, status, reason, version, headers, content_length, chunked,
                 keep_alive, upgrade):
        self.status: int = status
        self.reason: bytes = reason
        self.version: bytes = version
        self.headers: list = headers
        self.content_length: int | None = content_length
        self.chunked: bool = chunked
        self.keep_alive: bool = keep_alive     # the upstream lets us reuse the connection
        self.upgrade: bytes | None = upgrade


_NO_TOKENS: frozenset = frozenset()
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})


# The memos below remember what peers send over and over (header names, Connection values,
# Host values, status lines), each bounded in entries and bytes (lb/core/memo.py) and never
# keeping a key longer than this: what peers can make them hold stays under a MiB in all.
_CACHED_MAX_BYTES = 64
_TOKENS_SEEN = Memo(256, 64 * 1024, _CACHED_MAX_BYTES)   # a Connection value -> its tokens (a site sends few)


def _connection_tokens(specials: dict) -> frozenset:
    """The lowercase tokens of all Connection headers."""
    values = specials.get(b"connection")
    if not values:
        return _NO_TOKENS
    if len(values) == 1:
        # One value, the usual case ("keep-alive", "close"): its tokens are remembered, so
        # the split and the set are not made per message (0.37 -> 0.1 µs, bench/hotpath.py).
        tokens = _TOKENS_SEEN.get(values[0])
        if tokens is None:
            tokens = _tokens(values)
            _TOKENS_SEEN.put(values[0], tokens, len(values[0]))
        return tokens
    return _tokens(values)


def _tokens(values: list) -> frozenset:
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


def _drop_named(kept: list, tokens: frozenset) -> list:
    """Drop the headers that Connection names as hop-by-hop (RFC 9110 7.6.1)."""
    named = tokens - _CONNECTION_OPTIONS
    if not named:
        return kept
    return [(n, v) for n, v in kept if n.lower() not in named]


def _content_length(value: bytes, current: int | None) -> int:
    # Even identical duplicates are refused, as llhttp does: one rule for both parsers.
    if current is not None:
        raise HttpError("more than one Content-Length header", 400)
    value = value.strip()
    if not value.isdigit() or len(value) > MAX_CONTENT_LENGTH_DIGITS:
        raise HttpError(f"malformed Content-Length: {value[:40]!r}", 400)
    return int(value)


def _split_headers(raw_headers, special: frozenset):
    """One pass over raw headers: end-to-end ones kept, `special` ones collected.

    Returns (kept, specials) where specials maps a lowercase special name to the
    list of its values. Header names with '_' are dropped: some backends read
    them as '-', which would let a client smuggle e.g. a Transfer_Encoding.
    """
    kept = []
    specials: dict[bytes, list[bytes]] = {}
    seen = _NAMES_SEEN[special]
    for field in raw_headers:
        name = field[0]
        kind = seen.get(name)
        if kind is None:
            kind = _name_kind(name, special)
            seen.put(name, kind, len(name))
        if kind is _KEEP:
            kept.append(field)            # the (name, value) pair as parsed: no new tuple
        elif kind is not _DROP:
            if kind in specials:
                specials[kind].append(field[1])
            else:
                specials[kind] = [field[1]]
    return kept, specials


# What a header name is, as sent (a site sends few distinct ones): remembered per exact name
# and per set of special names, so that no name is lowercased and looked up per message
# (_split_headers 1.06 -> 0.48 µs for nginx's 5 response headers, bench/hotpath.py).
_KEEP, _DROP = b"", False
_NAMES_SEEN: dict = {}


def _name_kind(name: bytes, special: frozenset):
    """A special name's lowercase form, _KEEP for an end-to-end one, _DROP for one with '_'."""
    lname = name.lower()
    if lname in special:
        return lname
    return _DROP if b"_" in name else _KEEP


_FRAMING = frozenset({b"content-length", b"host", b"expect", b"via"})
_REQUEST_SPECIAL = HOP_BY_HOP | _FRAMING | REQUEST_OWNED
# Host, Expect and Via are end-to-end in a response: they pass as they came.
_RESPONSE_SPECIAL = HOP_BY_HOP | frozenset({b"content-length"})
_NAMES_SEEN.update({special: Memo(1024, 64 * 1024, _CACHED_MAX_BYTES)
                    for special in (_REQUEST_SPECIAL, _RESPONSE_SPECIAL)})


def _framing(specials: dict) -> tuple[int | None, bool]:
    """(content_length, chunked) from the collected framing headers; raises HttpError."""
    length = None
    for value in specials.get(b"content-length", ()):
        length = _content_length(value, length)
    codings = specials.get(b"transfer-encoding")
    if not codings:
        return length, False
    if length is not None:
        raise HttpError("both Transfer-Encoding and Content-Length", 400)
    parts = [p.strip().lower() for v in codings for p in v.split(b",")]
    if parts != [b"chunked"]:
        raise HttpError("unsupported Transfer-Encoding (only a single 'chunked' is accepted)", 400)
    return None, True


def head_size(target: bytes, raw_headers) -> int:
    """The bytes of a request head that count against max_header_bytes."""
    return len(target) + sum(len(n) + len(v) + 4 for n, v in raw_headers)


def check_head_size(target: bytes, raw_headers, max_header_bytes: int) -> None:
    """Raises HttpError(431) when the request line target and headers exceed the limit."""
    if head_size(target, raw_headers) > max_header_bytes:
        raise HttpError("request header section too large", 431)


def check_target(target: bytes, max_target_bytes: int) -> None:
    """Raises HttpError(414) for a request target over the limit."""
    if len(target) > max_target_bytes:
        raise HttpError("request target too long", 414)


# What llhttp and h11 refuse in a request target (SP, HTAB, CTL, DEL and bytes past ASCII: each
# parser's own grammar, checked in tests/unit/test_h2head.py): HTTP/2's :path is held to it.
_TARGET_REFUSED = re.compile(rb"[\x00-\x20\x7f-\xff]")


def check_target_grammar(target: bytes) -> None:
    """Raises HttpError(400) for a target an HTTP/1.1 request line could not carry."""
    if _TARGET_REFUSED.search(target) is not None:
        raise HttpError(f"malformed request target: {target[:60]!r}", 400)


def check_header_count(count: int, max_headers: int) -> None:
    """Raises HttpError(431) for more header fields than the limit."""
    if count > max_headers:
        raise HttpError(f"more than {max_headers} header fields", 431)


def analyze_request(method: bytes, target: bytes, version: bytes, raw_headers) -> RequestHead:
    """Validate a request and decide its framing. Raises HttpError(400/405)."""
    if method == b"CONNECT":
        raise HttpError("CONNECT is not supported by this proxy", 405)
    if method not in METHODS:
        raise HttpError(f"unknown method {method[:20]!r}", 400)
    if version not in (b"1.1", b"1.0"):
        raise HttpError(f"unsupported HTTP version {version[:10]!r}", 400)
    kept, specials = _split_headers(raw_headers, _REQUEST_SPECIAL)
    if len(specials) == 1 and b"host" in specials and len(specials[b"host"]) == 1:
        # Only end-to-end fields and one Host (a browser's GET, wrk's): nothing below but the
        # Host check applies, and the head is the general path's with its defaults
        # (analyze_request 1.0 -> 0.6 µs, bench/hotpath.py; tests/unit/test_http1.py checks
        # that both paths give the same head).
        host = specials[b"host"][0].strip()
        _check_host(host, target)
        return RequestHead(method, target, version, kept, host, None, False, version == b"1.1", None,
                           False, None, None)
    return _analyze_request(method, target, version, kept, specials)


def _analyze_request(method: bytes, target: bytes, version: bytes, kept: list, specials: dict) -> RequestHead:
    """analyze_request's general path, for any mix of special fields."""
    content_length, chunked = _framing(specials)
    hosts = specials.get(b"host")
    if hosts is not None and len(hosts) > 1:
        raise HttpError("more than one Host header", 400)
    if hosts is None and version == b"1.1":
        raise HttpError("HTTP/1.1 request without Host", 400)
    host = hosts[0].strip() if hosts else None
    _check_host(host, target)
    connection = _connection_tokens(specials)
    kept = _drop_named(kept, connection)
    if version == b"1.1":
        keep_alive = b"close" not in connection
    else:
        # An HTTP/1.0 message with Transfer-Encoding is processed, then closed (RFC 9112 6.1).
        keep_alive = b"keep-alive" in connection and not chunked
    upgrade = None
    if b"upgrade" in connection and b"upgrade" in specials:
        if version != b"1.1":
            # llhttp would switch anyway and end the request at its head; h11 would wait.
            raise HttpError("HTTP/1.0 cannot switch protocols (Upgrade)", 400)
        upgrade = specials[b"upgrade"][0].strip()
        if upgrade.lower() == b"h2c":
            # HTTP/2 by Upgrade (which RFC 9113 dropped) is not offered: the request is served
            # as HTTP/1.1 and its Upgrade, a hop-by-hop field, goes no further.
            upgrade = None
        elif chunked or content_length:
            # llhttp ends an Upgrade request at its head and hands the body over as the
            # new protocol's bytes (or, if the backend refuses to switch, as the next
            # request); h11 reads it as a body. One meaning for both: none.
            raise HttpError("an Upgrade request may not carry a body", 400)
    expect = specials.get(b"expect")
    expect_continue = bool(expect) and expect[0].strip().lower() == b"100-continue"
    via = b", ".join(specials[b"via"]) if b"via" in specials else None
    xff, forwarded = specials.get(b"x-forwarded-for"), specials.get(b"forwarded")
    forwarded_by = (b", ".join(xff) if xff else None, b", ".join(forwarded) if forwarded else None) \
        if xff or forwarded else None
    return RequestHead(method, target, version, kept, host, content_length, chunked, keep_alive, upgrade,
                       expect_continue, via, forwarded_by)


_GOOD_HOSTS = Memo(1024, 64 * 1024, 255)   # Host values seen valid (a site has few): no regex per request


def _check_host(host: bytes | None, target: bytes) -> None:
    """A Host that is a host[:port], and an absolute-form target whose authority is that
    Host (HAProxy 2.6 refuses a mismatch). Raises HttpError(400)."""
    if host is not None and _GOOD_HOSTS.get(host) is None:
        if not _HOST_VALUE_RE.match(host):
            raise HttpError(f"malformed Host: {host[:60]!r}", 400)
        _GOOD_HOSTS.put(host, True, len(host))
    if target[:1] != b"/" and target != b"*":
        absolute = _ABSOLUTE_RE.match(target)
        if absolute is None:
            raise HttpError(f"malformed request target: {target[:60]!r}", 400)
        authority = absolute.group(1)
        if b"@" in authority:
            raise HttpError("a request target with user info", 400)
        if host is None or authority.lower() != host.lower():
            raise HttpError("the request target's authority is not the Host", 400)


def analyze_response(status: int, reason: bytes, version: bytes, raw_headers) -> ResponseHead:
    """Validate a response head and decide its framing. Raises HttpError(502)."""
    if not 100 <= status <= 599:
        raise HttpError(f"bad response from backend: status {status} is outside 100-599", 502)
    try:
        kept, specials = _split_headers(raw_headers, _RESPONSE_SPECIAL)
        content_length, chunked = _framing(specials)
    except HttpError as exc:
        raise HttpError(f"bad response from backend: {exc.message}", 502) from None
    connection = _connection_tokens(specials)
    kept = _drop_named(kept, connection)
    keep_alive = b"close" not in connection if version == b"1.1" else b"keep-alive" in connection
    upgrade = specials[b"upgrade"][0] if status == 101 and b"upgrade" in specials else None
    return ResponseHead(status, reason, version, kept, content_length, chunked, keep_alive, upgrade)


# ---------------------------------------------------------------------------
# httptools (llhttp): the fast path

def _feed_llhttp(parser, data: bytes, what: str, status: int) -> bytes | None:
    """Feed llhttp. Returns the bytes after an Upgrade head (None when there was none).
    Raises HttpError(status) on bad bytes, or the HttpError a callback raised."""
    try:
        parser.feed_data(data)
        return None
    except httptools.HttpParserUpgrade as exc:
        return data[exc.args[0]:]
    except httptools.HttpParserCallbackError as exc:
        failure = exc.__context__
        if not isinstance(failure, HttpError):
            raise
    except httptools.HttpParserError as exc:
        failure = HttpError(f"{what}: {exc}", status)
    # Raised outside the except blocks and with no local left naming it: raised inside them,
    # the error, llhttp's, their tracebacks and this frame (holding `data`, up to 256 KiB a
    # read) form a cycle only the cyclic GC frees, and a flood of bad requests piles them up.
    failure.__context__ = None
    try:
        raise failure.with_traceback(None)
    finally:
        del failure


def _head_bytes_so_far(counted: int, began_here: bool, first_line: bytes, headers, piece_bytes: int) -> int:
    """The bytes of a head llhttp is still reading, after one more piece: in the piece the
    head began in, what was parsed of it (the bytes before it were another message's);
    after that, whole pieces, since every byte of them belongs to the head."""
    return head_size(first_line, headers) if began_here else counted + piece_bytes


class HttptoolsRequestParser:
    """Request parser over llhttp. `leftover` holds bytes after an Upgrade head.

    What one peer can make it hold is bounded: a head counts the bytes fed since it
    began (the piece it began in counts only what was parsed of it) against
    max_header_bytes; the target and the number of header fields have their own
    limits; in a body, bytes that make llhttp call nothing back (a chunk-size line,
    a chunk extension, a trailer being read) and complete trailer fields count against
    max_header_bytes too. Each limit is checked on every piece fed."""

    def __init__(self, sink, max_header_bytes: int, max_headers: int = 100, max_target_bytes: int = 8192):
        self._sink = sink
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._max_target_bytes = max_target_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._headers: list = []
        self._url = b""
        self._head_bytes = 0     # bytes of the head being parsed, as far as counted
        self._feeding = 0        # the size of the piece being fed now
        self._began_here = False # the head being parsed began in the piece being fed
        self._in_body = False
        self._heard = False      # llhttp called back about the body during this piece
        self._quiet_bytes = 0    # body bytes fed with no callback (framing, trailers)
        self._trailer_bytes = 0
        self.in_head = False
        self.leftover = b""
        self._switching = False  # the last head asked to switch protocols and lb will try

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises HttpError(400/414/431) on a bad or oversized request."""
        self._feeding = len(data)
        self._began_here = self._heard = False
        try:
            upgraded = _feed_llhttp(self._parser, data, "malformed request", 400)
            if upgraded is not None:
                if self._switching:
                    self.leftover = upgraded
                    return
                # llhttp stopped at a switch lb does not make (Upgrade: h2c): go on as HTTP/1.1
                self._parser = httptools.HttpRequestParser(self)
                if upgraded:
                    self.feed(upgraded)
                return
            if self.in_head:
                self._head_bytes = _head_bytes_so_far(self._head_bytes, self._began_here, self._url,
                                                      self._headers, len(data))
                if self._head_bytes > self._max_header_bytes:
                    raise HttpError("request header section too large", 431)
            elif self._in_body:
                self._quiet_bytes = 0 if self._heard else self._quiet_bytes + len(data)
                if self._quiet_bytes > self._max_header_bytes:
                    raise HttpError("request chunk framing or trailer section too large", 431)
        except HttpError:
            # The connection ends here; drop the head so far now (see HttptoolsResponseParser.feed).
            self._headers, self._url = [], b""
            raise

    def reset(self) -> None:
        """Start over on the same connection (after a refused Upgrade)."""
        leftover, self.leftover = self.leftover, b""
        self._parser = httptools.HttpRequestParser(self)
        if leftover:
            self.feed(leftover)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.in_head = True
        self._began_here = True
        self._head_bytes = 0
        self._headers = []
        self._url = b""
        self._trailer_bytes = 0
        self._sink.on_request_begin()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_target_bytes:
            check_target(self._url, self._max_target_bytes)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            headers = self._headers
            headers.append((name, value))
            if len(headers) > self._max_headers:
                check_header_count(len(headers), self._max_headers)
            return
        # A trailer field: counted, never kept (lb forwards no trailers).
        self._heard = True
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailer_bytes > self._max_header_bytes:
            raise HttpError("request trailer section too large", 431)

    def on_headers_complete(self) -> None:
        self.in_head = False
        # What was fed bounds the head's size; count exactly only past the limit.
        if self._head_bytes + self._feeding > self._max_header_bytes:
            check_head_size(self._url, self._headers, self._max_header_bytes)
        parser = self._parser
        head = analyze_request(parser.get_method(), self._url,
                               parser.get_http_version().encode(), self._headers)
        self._switching = head.upgrade is not None
        self._in_body = True
        self._quiet_bytes = 0
        self._sink.on_request(head)

    def on_body(self, body: bytes) -> None:
        self._heard = True
        self._sink.on_request_body(body)

    def on_chunk_header(self) -> None:
        self._heard = True

    def on_chunk_complete(self) -> None:
        self._heard = True

    def on_message_complete(self) -> None:
        self._in_body = False
        self._sink.on_request_end()


class HttptoolsResponseParser:
    """Response parser over llhttp; `expect()` before each response. A head counts the
    bytes fed since it began against max_response_header_bytes (nginx: "upstream sent
    too big header")."""

    def __init__(self, sink, max_response_header_bytes: int = 65536):
        self._sink = sink
        self._max_head_bytes = max_response_header_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list = []
        self._reason = b""
        self._head_only = False
        self._interim = False
        self._finished = False
        self._stale = False          # llhttp is mid-message after a HEAD response: make a new one
        self._in_head = False
        self._began_here = False     # the head being parsed began in the piece being fed
        self._head_bytes = 0
        self._feeding = 0
        self.leftover = b""

    def expect(self, method: bytes, upgrade: bool) -> None:
        # llhttp cannot be told that a response answers HEAD, so that response ends at its
        # head (`_stale`: llhttp still waits for its body) and the next one starts on a fresh
        # parser. After any other complete response llhttp is ready for the next one: a new
        # parser per response cost 0.42 µs (bench/hotpath.py).
        if self._stale:
            self._parser = httptools.HttpResponseParser(self)
            self._stale = False
        self._head_only = method == b"HEAD"
        self._finished = False

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises HttpError(502) on a malformed or oversized response."""
        self._began_here = False
        self._feeding = len(data)
        try:
            upgraded = _feed_llhttp(self._parser, data, "bad response from backend", 502)
            if upgraded is not None:
                self.leftover = upgraded
            if self._in_head:
                self._head_bytes = _head_bytes_so_far(self._head_bytes, self._began_here, self._reason,
                                                      self._headers, len(data))
                if self._head_bytes > self._max_head_bytes:
                    raise HttpError("backend sent too big a response header", 502)
        except HttpError:
            # The connection ends here. The head so far is dropped now: this object and llhttp's
            # refer to each other, so it would otherwise wait for the cyclic GC's oldest
            # generation (measured: 20 clients asking for 256 KiB heads kept lb 28 MiB larger).
            self._headers, self._reason = [], b""
            raise

    def on_message_begin(self) -> None:
        if self._finished:
            raise HttpError("backend sent bytes after its response", 502)
        self._headers = []
        self._reason = b""
        self._in_head = self._began_here = True
        self._head_bytes = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        if len(self._reason) > 1024:
            raise HttpError("backend sent too long a reason phrase", 502)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        # A head that came whole in one piece: what was fed bounds it; count exactly only past it.
        if self._head_bytes + self._feeding > self._max_head_bytes and \
                head_size(self._reason, self._headers) > self._max_head_bytes:
            raise HttpError("backend sent too big a response header", 502)
        parser = self._parser
        status = parser.get_status_code()
        head = analyze_response(status, self._reason, parser.get_http_version().encode(),
                                self._headers)
        self._reason = b""
        self._interim = 100 <= status < 200 and status != 101
        self._sink.on_response(head)
        if self._head_only and not self._interim:
            self._finished = self._stale = True
            self._sink.on_response_end()

    def on_body(self, body: bytes) -> None:
        if self._finished:
            raise HttpError("backend sent a body to a HEAD request", 502)
        self._sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif not self._finished:
            self._finished = True
            self._sink.on_response_end()


# ---------------------------------------------------------------------------
# h11: the pure-Python implementation

def _h11_error(exc: h11.ProtocolError, default_status: int) -> HttpError:
    # h11 says 501 for an unknown Transfer-Encoding; lb answers every framing problem 400.
    status = 431 if default_status == 400 and exc.error_status_hint == 431 else default_status
    return HttpError(f"malformed {'request' if default_status == 400 else 'response'}: {exc}", status)


_HEX = frozenset(b"0123456789abcdefABCDEF")
SIZE, EXT, SIZE_LF, DATA, DATA_CR, DATA_LF, LINE_START, LINE, LINE_LF, END_LF, DONE = range(11)
# States where one byte must follow: (that byte, the next state, what it is when it does not)
_CHUNK_EXPECT = {
    DATA_CR: (0x0D, DATA_LF, "chunk data not followed by CRLF"),
    DATA_LF: (0x0A, SIZE, "chunk data not followed by CRLF"),
    LINE_LF: (0x0A, LINE_START, "malformed trailer section: CR without LF"),
    END_LF: (0x0A, DONE, "malformed chunked body end: CR without LF"),
}


class ChunkFraming:
    """The framing of a chunked body, checked on the raw bytes as strictly as llhttp does:
    a chunk size of hex digits, an extension without CR or LF in it, CRLF after the size
    line, after the data and after each trailer line. h11 reads these leniently (a CR inside
    an extension, a space after the size, bare LFs), which lets a proxy in front of lb and lb
    disagree on where a chunk ends; in h11 mode every chunked body goes through this."""

    __slots__ = ("state", "size", "digits", "left")

    def __init__(self):
        self.state, self.size, self.digits, self.left = SIZE, 0, 0, 0

    def feed(self, data: bytes) -> int:
        """Check `data`; returns how many of its bytes belong to the body (all of them until
        the last CRLF). Raises HttpError(400) at the first byte llhttp would refuse."""
        i, n = 0, len(data)
        while i < n and self.state != DONE:
            state = self.state
            if state == DATA:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = DATA_CR
                continue
            byte = data[i]
            i += 1
            if state == SIZE:
                if byte in _HEX and self.digits < MAX_CONTENT_LENGTH_DIGITS:
                    self.size = self.size * 16 + int(chr(byte), 16)
                    self.digits += 1
                elif byte == 0x3B and self.digits:          # ';' an extension
                    self.state = EXT
                elif byte == 0x0D and self.digits:
                    self.state = SIZE_LF
                else:
                    raise HttpError("malformed chunk size line", 400)
            elif state == EXT:
                if byte == 0x0D:
                    self.state = SIZE_LF
                elif byte == 0x0A or byte < 0x20 and byte != 0x09 or byte == 0x7F:
                    raise HttpError("malformed chunk extension", 400)
            elif state == SIZE_LF:
                if byte != 0x0A:
                    raise HttpError("malformed chunk size line: CR without LF", 400)
                if self.size:
                    self.state, self.left = DATA, self.size
                else:
                    self.state = LINE_START
                self.size = self.digits = 0
            elif state in _CHUNK_EXPECT:
                wanted, following, problem = _CHUNK_EXPECT[state]
                if byte != wanted:
                    raise HttpError(problem, 400)
                self.state = following
            elif state == LINE_START:
                self.state = END_LF if byte == 0x0D else LINE
                if byte == 0x0A:
                    raise HttpError("malformed trailer section: bare LF", 400)
            elif state == LINE:
                if byte == 0x0D:
                    self.state = LINE_LF
                elif byte == 0x0A:
                    raise HttpError("malformed trailer section: bare LF", 400)
        return i


class H11RequestParser:
    """Request parser over h11 (server role). Each request gets a fresh h11
    state machine fed with the bytes that followed the last one: lb decides
    keep-alive and framing itself, and h11 alone would refuse HTTP/1.0 keep-alive."""

    def __init__(self, sink, max_header_bytes: int, max_headers: int = 100, max_target_bytes: int = 8192):
        self._sink = sink
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._max_target_bytes = max_target_bytes
        self._conn = self._new_conn()
        self._begun = False
        self._upgrade = False            # the request being parsed asks to switch protocols
        self._pending_cr = b""           # a CR between requests, maybe half of an empty line
        self._chunks: ChunkFraming | None = None   # the chunked body being read, checked raw
        self.leftover = b""

    def _new_conn(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header_bytes)

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises HttpError(400/431) on a bad or oversized request."""
        if self._between_requests():
            data = self._skip_empty_lines(data)
            if not data:
                return
        if self._chunks is not None:
            self._check_chunks(data)
        self._conn.receive_data(data)
        self._check_request_line()
        self._check_raw_head()
        while True:
            conn = self._conn
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _h11_error(exc, 400) from None
            if event is h11.NEED_DATA:
                if conn.their_state is h11.IDLE and conn.trailing_data[0] and not self._begun:
                    self._begun = True
                    self._sink.on_request_begin()
                return
            if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return
            self._dispatch(event)
            if isinstance(event, h11.EndOfMessage):
                rest = conn.trailing_data[0]
                if conn.their_state is h11.MIGHT_SWITCH_PROTOCOL and self._upgrade:
                    self.leftover = rest     # an Upgrade: nothing more is parsed here
                    return
                # h11 also waits for a switch on an Upgrade header that lb does not take for
                # one (no "Connection: upgrade"); lb goes on parsing, as llhttp does, rather
                # than let h11 buffer what follows without bound.
                self._conn = self._new_conn()
                rest = self._skip_empty_lines(rest)
                if rest:                     # (b"" would mean end of stream to h11)
                    self._conn.receive_data(rest)

    def _skip_empty_lines(self, data: bytes) -> bytes:
        """RFC 9112 2.2: a server SHOULD ignore empty lines (CRLF) received before a
        request-line, as llhttp does; h11 alone answers them with a 400. A CR that ends
        a piece waits for the next one."""
        data, self._pending_cr = self._pending_cr + data, b""
        while data.startswith(b"\r\n"):
            data = data[2:]
        if data == b"\r":
            data, self._pending_cr = b"", data
        return data

    def _check_request_line(self) -> None:
        """A request line still arriving that is already longer than a target may be: 414,
        as llhttp says, before h11's own limit on a whole head could say 431."""
        conn = self._conn
        if conn.their_state is h11.IDLE:
            pending = conn.trailing_data[0]
            end = pending.find(b"\r\n", 0, self._max_target_bytes + REQUEST_LINE_SLACK)
            if end == -1 and len(pending) > self._max_target_bytes + REQUEST_LINE_SLACK:
                raise HttpError("request target too long", 414)

    def _check_raw_head(self) -> None:
        """What llhttp refuses in a head and h11 quietly accepts (bare LF or CR, obs-fold,
        control bytes), checked on the raw bytes while the head arrives. Raises HttpError(400)."""
        conn = self._conn
        if conn.their_state is not h11.IDLE:
            return
        pending = conn.trailing_data[0]
        end = pending.find(b"\r\n\r\n")
        if end >= 0:
            head = pending[:end + 2]
        else:
            head = pending[:-1] if pending.endswith(b"\r") else pending   # half a CRLF, maybe
        if _BARE_LF.search(head) or _BARE_CR.search(head):
            raise HttpError("malformed request: a line not ended by CRLF", 400)
        if b"\r\n " in head or b"\r\n\t" in head:
            raise HttpError("malformed request: obsolete line folding", 400)
        if _CTL.search(head):
            raise HttpError("malformed request: a control character in the head", 400)

    def _check_chunks(self, data: bytes) -> None:
        checker = self._chunks
        checker.feed(data)
        if checker.state == DONE:
            self._chunks = None

    def _between_requests(self) -> bool:
        conn = self._conn
        return conn.their_state is h11.IDLE and not conn.trailing_data[0] and not self._begun

    def _dispatch(self, event) -> None:
        if isinstance(event, h11.Request):
            if not self._begun:
                self._sink.on_request_begin()
            self._begun = False
            # h11 bounds only heads that arrive in pieces; one that came whole is checked here.
            raw = event.headers.raw_items()
            check_target(event.target, self._max_target_bytes)
            check_header_count(len(raw), self._max_headers)
            check_head_size(event.target, raw, self._max_header_bytes)
            head = analyze_request(event.method, event.target, event.http_version,
                                   event.headers.raw_items())
            self._upgrade = head.upgrade is not None
            if head.chunked:
                self._chunks = ChunkFraming()
                self._check_chunks(self._conn.trailing_data[0])    # what came with the head
            self._sink.on_request(head)
        elif isinstance(event, h11.Data):
            self._sink.on_request_body(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            self._sink.on_request_end()

    def reset(self) -> None:
        """Start over on the same connection (after a refused Upgrade)."""
        leftover, self.leftover = self.leftover, b""
        self._conn = self._new_conn()
        if leftover:
            self.feed(leftover)


class H11ResponseParser:
    """Response parser over h11 (client role); `expect()` replays a stand-in
    request so h11 knows about HEAD and Upgrade."""

    def __init__(self, sink, max_response_header_bytes: int = 65536):
        self._sink = sink
        self._max_head_bytes = max_response_header_bytes
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_response_header_bytes)
        self.leftover = b""

    def expect(self, method: bytes, upgrade: bool) -> None:
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        headers = [(b"host", b"backend"), (b"content-length", b"0")]
        if upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"lb")]
        conn.send(h11.Request(method=method, target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())

    def feed(self, data: bytes) -> None:
        """Parse `data` (b"" means the backend closed); raises HttpError(502)."""
        conn = self._conn
        if data and conn.their_state is h11.DONE:
            raise HttpError("backend sent bytes after its response", 502)
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _h11_error(exc, 502) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if conn.their_state is h11.SWITCHED_PROTOCOL:
                    self.leftover = conn.trailing_data[0]
                return
            if isinstance(event, (h11.Response, h11.InformationalResponse)):
                raw = event.headers.raw_items()
                # h11 bounds only heads that arrive in pieces; one that came whole is checked here.
                if head_size(event.reason, raw) > self._max_head_bytes:
                    raise HttpError("backend sent too big a response header", 502)
                self._sink.on_response(analyze_response(
                    event.status_code, event.reason, event.http_version, raw))
                if event.status_code == 101:
                    self._sink.on_response_end()
            elif isinstance(event, h11.Data):
                self._sink.on_response_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._sink.on_response_end()
                if conn.trailing_data[0]:
                    raise HttpError("backend sent bytes after its response", 502)
            elif isinstance(event, h11.ConnectionClosed):
                return


PARSERS = {
    "httptools": (HttptoolsRequestParser, HttptoolsResponseParser),
    "h11": (H11RequestParser, H11ResponseParser),
}


def parsers_for(name: str):
    """(RequestParser class, ResponseParser class) for config `http:`."""
    return PARSERS["httptools" if name == "auto" else name]


# ---------------------------------------------------------------------------
# Serialization: every forwarded head is rebuilt from parsed fields.

def forwarded_element(client_ip: bytes, host: bytes | None, proto: bytes = b"http") -> bytes:
    """lb's hop as an RFC 7239 Forwarded element; an IPv6 address or a host:port is quoted.
    `proto` is the scheme the client used (https on a TLS listener)."""
    node = b'"[%s]"' % client_ip if b":" in client_ip else client_ip
    element = b"for=" + node
    if host:
        element += b';host="%s"' % host if b":" in host or b'"' in host else b";host=" + host
    return element + b";proto=" + proto


def client_address(forwarded_for: bytes | None, peer: bytes, trusted) -> bytes:
    """Whom a request came from: the rightmost address of the X-Forwarded-For chain plus the
    peer that `trusted` (a predicate) does not vouch for; the leftmost when it vouches for all."""
    chain = [part.strip() for part in forwarded_for.split(b",")] if forwarded_for else []
    chain.append(peer)
    for address in reversed(chain):
        if not trusted(address):
            return address
    return chain[0]


def serialize_request(head: RequestHead, client_ip: bytes, extra: list, trusted: bool = False,
                      forwarded: bytes | None = None, own: bytes | None = None, proto: bytes = b"http") -> bytes:
    """The head lb sends upstream: HTTP/1.1, end-to-end headers, lb's own headers. From a
    trusted proxy, the X-Forwarded-For and Forwarded chains it sent are kept and lb's hop
    appended; from anyone else they are lb's alone. `forwarded` is lb's Forwarded element
    when the caller has it ready (forwarded_element(client_ip, head.host)); `own` is the
    whole of lb's own lines when the caller has them ready (own_headers())."""
    # Forwarded as HTTP/1.1, which requires Host: an HTTP/1.0 request without one
    # gets an empty Host, as RFC 9112 3.2 prescribes for a target with no authority.
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\nHost: ", head.host or b"", b"\r\n"]
    for name, value in head.headers:
        parts += (name, b": ", value, b"\r\n")
    if head.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None:
        parts += (b"Content-Length: ", b"%d" % head.content_length, b"\r\n")
    if head.expect_continue:
        parts.append(b"Expect: 100-continue\r\n")
    if head.upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    parts.append(own if own is not None else own_headers(head, client_ip, trusted, forwarded, proto))
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def own_headers(head: RequestHead, client_ip: bytes, trusted: bool = False, forwarded: bytes | None = None,
                proto: bytes = b"http") -> bytes:
    """lb's own request header lines: X-Forwarded-For/-Proto/-Host, Forwarded, Via. They are
    the same for every request of a connection with the same Host and version unless the
    request brings a chain to extend (`chained`), so a connection makes them once."""
    xff, chain = head.forwarded_by if trusted and head.forwarded_by else (None, None)
    parts = [b"X-Forwarded-For: ", xff + b", " + client_ip if xff else client_ip, b"\r\nX-Forwarded-Proto: ",
             proto, b"\r\n"]
    if head.host is not None:
        parts += (b"X-Forwarded-Host: ", head.host, b"\r\n")
    element = forwarded or forwarded_element(client_ip, head.host, proto)
    parts += (b"Forwarded: ", chain + b", " + element if chain else element, b"\r\n")
    via = b"%s lb" % head.version
    parts += (b"Via: ", head.via + b", " + via if head.via else via, b"\r\n")
    return b"".join(parts)


def chained(head: RequestHead, trusted: bool) -> bool:
    """Whether lb's own lines for this request extend what it brought (Via, or a trusted
    proxy's X-Forwarded-For/Forwarded): then they are made for it alone."""
    return head.via is not None or (trusted and head.forwarded_by is not None)


_STATUS_LINES = Memo(256, 64 * 1024, 2 * _CACHED_MAX_BYTES)    # (status, reason) -> its status line


def _status_line(status: int, reason: bytes) -> bytes:
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or reason_phrase(status))
        _STATUS_LINES.put((status, reason), line, len(reason) + len(line))
    return line


def serialize_response(status: int, reason: bytes, headers: list, framing: bytes) -> bytes:
    """A response head for the client; `framing` is the ready-made framing lines. The status
    line is made once per status and reason (a backend sends few)."""
    parts = [_status_line(status, reason)]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (framing, b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; nothing for no data, which as a chunk ("0") would end
    the body: an empty HTTP/2 DATA frame once did, and the rest of the body then framed the
    next request on the backend connection (found by tests/e2e/test_h2_framing.py)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
# The stdlib's phrases, with RFC 9110's newer names where Python 3.11 keeps the old ones.
STANDARD_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus} | {
    413: b"Content Too Large", 414: b"URI Too Long", 416: b"Range Not Satisfiable",
    422: b"Unprocessable Content"}


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of a status (RFC 9110), b"Unknown" for others."""
    return STANDARD_REASONS.get(status, b"Unknown")
