"""The request and response parsers over h11, the pure-Python implementation. No I/O.

h11 is slower than llhttp (~70 us a head) and more lenient (it accepts TE+CL, bare LF,
obs-fold, a loose chunked framing), so the adapter holds it to llhttp's strictness: the raw
head is checked for what h11 would normalise away, a chunked body goes through
`ChunkFraming`, and h11's header list is never forwarded as-is but goes through the shared
analysis (lb/core/http1/heads.py). lb, not h11, decides keep-alive and framing.
"""

from __future__ import annotations

import re

import h11

from ..errors import HttpError
from .framing import DONE, ChunkFraming
from .heads import analyze_request, analyze_response, check_head_size, check_header_count, check_target, head_size

# In a raw request head (h11 mode, which normalises these away before lb could see them):
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
REQUEST_LINE_SLACK = 32          # a request line is its target plus a method and a version


def _h11_error(exc: h11.ProtocolError, default_status: int) -> HttpError:
    # h11 says 501 for an unknown Transfer-Encoding; lb answers every framing problem 400.
    status = 431 if default_status == 400 and exc.error_status_hint == 431 else default_status
    return HttpError(f"malformed {'request' if default_status == 400 else 'response'}: {exc}", status)


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

    def close(self) -> None:
        """The connection is gone (the same call as the llhttp adapter's; nothing cyclic here)."""
        self._sink = None

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

    def close(self) -> None:
        """The connection is gone (the same call as the llhttp adapter's)."""
        self._sink = None

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
