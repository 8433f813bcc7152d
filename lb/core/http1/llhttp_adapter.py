"""The request and response parsers over httptools (llhttp, the C parser of Node.js): the
fast path and the default. No I/O.

llhttp calls back per piece of a head (`on_url`, `on_header`, ...); the adapter collects a
head, counts its bytes against the limits on every piece fed, and hands it whole to the
shared analysis (lb/core/http1/heads.py) before the sink sees it. llhttp frames bodies
itself, by the same rules the analysis enforces, and refuses what it cannot frame.
"""

from __future__ import annotations

import httptools

from ..errors import HttpError
from .heads import analyze_request, analyze_response, check_head_size, check_header_count, check_target, head_size


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

    def close(self) -> None:
        """The connection is gone: llhttp's parser holds this adapter's bound methods and the
        adapter its sink, a cycle only the cyclic GC would free. Nothing is fed after this."""
        self._parser = self._sink = None

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

    def close(self) -> None:
        """The connection is gone: break llhttp's parser <-> adapter cycle (as the request
        parser's close)."""
        self._parser = self._sink = None

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
