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

from http import HTTPStatus

import h11
import httptools

from .errors import HttpError

# RFC 9110 7.6.1 hop-by-hop fields, plus the legacy Proxy-Connection.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})
# Request headers lb sets itself; a client's copy is dropped, never trusted.
REQUEST_OWNED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
REPLAY_LIMIT_BYTES = 64 * 1024
MAX_CONTENT_LENGTH_DIGITS = 18


class RequestHead:
    """A parsed, validated request head. `headers` are end-to-end only."""

    __slots__ = ("method", "target", "version", "headers", "host", "content_length",
                 "chunked", "keep_alive", "upgrade", "expect_continue", "via")

    def __init__(self, method, target, version, headers, host, content_length,
                 chunked, keep_alive, upgrade, expect_continue, via):
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


def _connection_tokens(specials: dict) -> frozenset:
    """The lowercase tokens of all Connection headers."""
    values = specials.get(b"connection")
    if not values:
        return _NO_TOKENS
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
    for name, value in raw_headers:
        lname = name.lower()
        if lname in special:
            if lname in specials:
                specials[lname].append(value)
            else:
                specials[lname] = [value]
        elif b"_" not in name:
            kept.append((name, value))
    return kept, specials


_FRAMING = frozenset({b"content-length", b"host", b"expect", b"via"})
_REQUEST_SPECIAL = HOP_BY_HOP | _FRAMING | REQUEST_OWNED
_RESPONSE_SPECIAL = HOP_BY_HOP | _FRAMING


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


def check_head_size(target: bytes, raw_headers, max_header_bytes: int) -> None:
    """Raises HttpError(431) when the request line target and headers exceed the limit."""
    size = len(target) + sum(len(n) + len(v) + 4 for n, v in raw_headers)
    if size > max_header_bytes:
        raise HttpError("request header section too large", 431)


def analyze_request(method: bytes, target: bytes, version: bytes, raw_headers) -> RequestHead:
    """Validate a request and decide its framing. Raises HttpError(400/405)."""
    if method == b"CONNECT":
        raise HttpError("CONNECT is not supported by this proxy", 405)
    if version not in (b"1.1", b"1.0"):
        raise HttpError(f"unsupported HTTP version {version[:10]!r}", 400)
    kept, specials = _split_headers(raw_headers, _REQUEST_SPECIAL)
    content_length, chunked = _framing(specials)
    hosts = specials.get(b"host")
    if hosts is not None and len(hosts) > 1:
        raise HttpError("more than one Host header", 400)
    if hosts is None and version == b"1.1":
        raise HttpError("HTTP/1.1 request without Host", 400)
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
        if chunked or content_length:
            # llhttp ends an Upgrade request at its head and hands the body over as the
            # new protocol's bytes (or, if the backend refuses to switch, as the next
            # request); h11 reads it as a body. One meaning for both: none.
            raise HttpError("an Upgrade request may not carry a body", 400)
    expect = specials.get(b"expect")
    expect_continue = bool(expect) and expect[0].strip().lower() == b"100-continue"
    via = b", ".join(specials[b"via"]) if b"via" in specials else None
    return RequestHead(method, target, version, kept, hosts[0].strip() if hosts else None,
                       content_length, chunked, keep_alive, upgrade, expect_continue, via)


def analyze_response(status: int, reason: bytes, version: bytes, raw_headers) -> ResponseHead:
    """Validate a response head and decide its framing. Raises HttpError(502)."""
    try:
        kept, specials = _split_headers(raw_headers, _RESPONSE_SPECIAL)
        content_length, chunked = _framing(specials)
    except HttpError as exc:
        raise HttpError(f"bad response from backend: {exc.message}", 502) from None
    for name in (b"host", b"expect", b"via"):
        for value in specials.get(name, ()):
            kept.append((name.title(), value))
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
    except httptools.HttpParserUpgrade as exc:
        return data[exc.args[0]:]
    except httptools.HttpParserCallbackError as exc:
        cause = exc.__context__
        if isinstance(cause, HttpError):
            raise cause from None
        raise
    except httptools.HttpParserError as exc:
        raise HttpError(f"{what}: {exc}", status) from None
    return None


class HttptoolsRequestParser:
    """Request parser over llhttp. `leftover` holds bytes after an Upgrade head."""

    def __init__(self, sink, max_header_bytes: int):
        self._sink = sink
        self._max_header_bytes = max_header_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._headers: list = []
        self._url = b""
        self._head_bytes = 0     # bytes fed since the head began, before this feed
        self._feeding = 0        # the size of the piece being fed now
        self.in_head = False
        self.leftover = b""

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises HttpError(400/431) on a bad or oversized request."""
        self._feeding = len(data)
        upgraded = _feed_llhttp(self._parser, data, "malformed request", 400)
        if upgraded is not None:
            self.leftover = upgraded
            return
        if self.in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_header_bytes:
                raise HttpError("request header section too large", 431)

    def reset(self) -> None:
        """Start over on the same connection (after a refused Upgrade)."""
        leftover, self.leftover = self.leftover, b""
        self._parser = httptools.HttpRequestParser(self)
        if leftover:
            self.feed(leftover)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.in_head = True
        self._head_bytes = 0
        self._headers = []
        self._url = b""
        self._sink.on_request_begin()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        # What was fed bounds the head's size; count exactly only past the limit.
        if self._head_bytes + self._feeding > self._max_header_bytes:
            check_head_size(self._url, self._headers, self._max_header_bytes)
        parser = self._parser
        head = analyze_request(parser.get_method(), self._url,
                               parser.get_http_version().encode(), self._headers)
        self._sink.on_request(head)

    def on_body(self, body: bytes) -> None:
        self._sink.on_request_body(body)

    def on_message_complete(self) -> None:
        self._sink.on_request_end()


class HttptoolsResponseParser:
    """Response parser over llhttp; `expect()` before each response."""

    def __init__(self, sink):
        self._sink = sink
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list = []
        self._reason = b""
        self._head_only = False
        self._interim = False
        self._finished = False
        self.leftover = b""

    def expect(self, method: bytes, upgrade: bool) -> None:
        # llhttp cannot be told that a response answers HEAD, so that response
        # ends at its head and the next one starts on a fresh parser.
        if self._finished:
            self._parser = httptools.HttpResponseParser(self)
        self._head_only = method == b"HEAD"
        self._finished = False

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises HttpError(502) on a malformed response."""
        upgraded = _feed_llhttp(self._parser, data, "bad response from backend", 502)
        if upgraded is not None:
            self.leftover = upgraded

    def on_message_begin(self) -> None:
        if self._finished:
            raise HttpError("backend sent bytes after its response", 502)
        self._headers = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        head = analyze_response(status, self._reason, parser.get_http_version().encode(),
                                self._headers)
        self._reason = b""
        self._interim = 100 <= status < 200 and status != 101
        self._sink.on_response(head)
        if self._head_only and not self._interim:
            self._finished = True
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


class H11RequestParser:
    """Request parser over h11 (server role). Each request gets a fresh h11
    state machine fed with the bytes that followed the last one: lb decides
    keep-alive and framing itself, and h11 alone would refuse HTTP/1.0 keep-alive."""

    def __init__(self, sink, max_header_bytes: int):
        self._sink = sink
        self._max_header_bytes = max_header_bytes
        self._conn = self._new_conn()
        self._begun = False
        self._upgrade = False            # the request being parsed asks to switch protocols
        self._pending_cr = b""           # a CR between requests, maybe half of an empty line
        self.leftover = b""

    def _new_conn(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header_bytes)

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises HttpError(400/431) on a bad or oversized request."""
        if self._between_requests():
            data = self._skip_empty_lines(data)
            if not data:
                return
        self._conn.receive_data(data)
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

    def _between_requests(self) -> bool:
        conn = self._conn
        return conn.their_state is h11.IDLE and not conn.trailing_data[0] and not self._begun

    def _dispatch(self, event) -> None:
        if isinstance(event, h11.Request):
            if not self._begun:
                self._sink.on_request_begin()
            self._begun = False
            # h11 bounds only heads that arrive in pieces; one that came whole is checked here.
            check_head_size(event.target, event.headers.raw_items(), self._max_header_bytes)
            head = analyze_request(event.method, event.target, event.http_version,
                                   event.headers.raw_items())
            self._upgrade = head.upgrade is not None
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

    def __init__(self, sink):
        self._sink = sink
        self._conn = h11.Connection(h11.CLIENT)
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
                self._sink.on_response(analyze_response(
                    event.status_code, event.reason, event.http_version, event.headers.raw_items()))
                if event.status_code == 101:
                    self._sink.on_response_end()
            elif isinstance(event, h11.Data):
                self._sink.on_response_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._sink.on_response_end()
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

def serialize_request(head: RequestHead, client_ip: bytes, extra: list) -> bytes:
    """The head lb sends upstream: HTTP/1.1, end-to-end headers, lb's own headers."""
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
    parts += (b"X-Forwarded-For: ", client_ip, b"\r\nX-Forwarded-Proto: http\r\n")
    if head.host is not None:
        parts += (b"X-Forwarded-Host: ", head.host, b"\r\n")
    via = b"%s lb" % head.version
    parts += (b"Via: ", head.via + b", " + via if head.via else via, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def serialize_response(status: int, reason: bytes, headers: list, framing: bytes) -> bytes:
    """A response head for the client; `framing` is the ready-made framing lines."""
    parts = [b"HTTP/1.1 %d " % status, reason or reason_phrase(status), b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (framing, b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
# The stdlib's phrases, with RFC 9110's newer names where Python 3.11 keeps the old ones.
STANDARD_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus} | {
    413: b"Content Too Large", 414: b"URI Too Long", 416: b"Range Not Satisfiable",
    422: b"Unprocessable Content"}


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of a status (RFC 9110), b"Unknown" for others."""
    return STANDARD_REASONS.get(status, b"Unknown")
