"""A client's connection: the request parser's sink, pipelining, deadlines, tunnels.

A `ClientConnection` is an asyncio Protocol. Each parsed request head becomes
an `Exchange` (exchange.py); requests on one connection are routed one by one,
so a keep-alive client is never bound to a backend; pipelined requests queue
in `pending` and are answered in order. Backpressure: a `FlowControl` pauses
reading while any named reason holds (the upstream cannot take more, too much
is buffered, a queue of pipelined requests); the response side pauses the
upstream's reading while the client's write buffer is full.

The connection is in one `Mode` (lb/core/modes.py) and moves only through that table
(`_to`; `modes.KEEPALIVE_MOVES` are inlined, held to the table by a test); reads go to
the mode's handler (`RECEIVE`), a passed deadline to its timeout handler (`TIMEOUT`),
and the sweeper compares the deadline the mode's row names (`deadline`).

Anything other than an HttpError raised while handling the client's bytes is
a bug: it is logged with its traceback and the client gets a 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ..core import http1
from ..core import modes
from ..core.errors import HttpError
from ..core.exchange import body_deadline
from ..core.memo import Memo
from ..core.modes import (BODY, CLOSED, CLOSING_WEBSOCKET, ERROR, HEAD, HOLDING, IDLE, INFINITY, LINGER_MAX_BYTES,
                          LINGER_S, LINGERING, NEW, TUNNEL, WAITING, WEBSOCKET_CLOSE_WAIT_S, Mode, entry_deadline,
                          next_mode)
from ..tls import tls_fields
from .exchange import Exchange
from .flow import FlowControl
from .h2client import H2_PREFACE, H2ClientConnection
from .responses import error_response
from .tunnel import TunnelSide
from .upstream import WRITE_HIGH_BYTES

log = logging.getLogger("lb.proxy")

MAX_PIPELINED = 16
PARSE_SLICE = 2048          # outside a body, the most parsed at once (bounds heads past the queue's limit)
EMPTY: deque = deque(maxlen=0)             # every connection's `pending` until a request waits
STOPS_PARSING = (HOLDING, ERROR, CLOSED)       # what is left of a read is not the parser's
# (client IP, scheme, Host, version) -> lb's own header lines: a new connection from a client
# seen before (every `Connection: close` request) reuses them (own_headers 2.5 -> 0.4 µs).
_OWN_SEEN = Memo(1024, 256 * 1024, 1024)
__all__ = ["ClientConnection", "LINGER_MAX_BYTES", "LINGER_S", "WEBSOCKET_CLOSE_WAIT_S"]


class ClientConnection(TunnelSide, asyncio.BufferedProtocol):
    """One client TCP connection; the request parser's sink."""

    __slots__ = ("_corked", "_own", "body_bytes", "body_started", "closing_after_current", "current", "deadline",
                 "deferred_error", "discard_budget", "eof_seen", "eof_written", "flow", "h2c", "h2c_held", "held",
                 "hsts", "hsts_line", "ip", "listener", "mode", "parser", "pending", "plane", "proto", "reading",
                 "redirect", "tls", "tls_text", "transport", "trusted", "tunnel", "tunnel_route", "tunnel_websocket",
                 "unparsed", "write_paused", "__weakref__")
    h2 = False

    def __init__(self, plane, listener=None):
        self.plane = plane
        self.listener = listener                 # its ListenerConfig (None: a plain one)
        self.proto = b"https" if listener is not None and listener.tls is not None else b"http"
        self.redirect = listener is not None and listener.redirect_https
        self.h2c = listener is not None and listener.http2      # HTTP/2 with prior knowledge may come
        hsts = listener.tls.hsts if self.proto == b"https" else None
        self.hsts = hsts.header_value if hsts is not None else b""     # Strict-Transport-Security; b"": off
        self.hsts_line = b"Strict-Transport-Security: %s\r\n" % self.hsts if self.hsts else b""
        self.tls: dict | None = None             # version, cipher, SNI name, resumed: for the access log
        self.tls_text = ""                       # the same as a JSON member, ready for a log line
        self.h2c_held = b""                      # the start of what may be the HTTP/2 preface
        self.transport = None
        self.flow: FlowControl | None = None
        self.ip = b"-"
        self.trusted = False                     # the peer is one of trusted_proxies
        self._own: tuple | None = None           # (Host, version, lb's own header lines) last made
        self.unparsed = b""                      # bytes behind a full pipelining queue
        self.parser = None                       # made at the first byte: idle connections are cheap
        self.current: Exchange | None = None
        self.reading: Exchange | None = None     # the exchange whose request is being parsed
        self.pending: deque[Exchange] = EMPTY    # a deque of its own once a request waits
        self.held = b""                          # bytes after an Upgrade request, until 101 or not
        self.mode: Mode = NEW
        self.tunnel = None                       # the UpstreamConnection after a 101
        self.tunnel_route = None
        self.tunnel_websocket = False
        self.discard_budget = 0                  # bytes it will still drop (LINGERING, CLOSING_WEBSOCKET)
        self.deadline = INFINITY
        self.body_started = 0.0                  # when the body being read began (min_body_rate)
        self.body_bytes = 0
        self.write_paused = False
        self.eof_written = False                 # a tunnel's backend half-closed towards us
        self.eof_seen = False                    # the client half-closed its side of a tunnel
        self._corked: list[bytes] | None = None  # writes held while one upstream read is parsed
        self.closing_after_current = False       # the client half-closed after its requests
        self.deferred_error: HttpError | None = None   # a bad pipelined request, answered in turn
        plane.connection_accepted(self)          # made at accept, by the listener's protocol factory

    # -- asyncio Protocol ------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.plane.connection_made(self)         # before an HTTP/2 connection takes its place
        transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES)
        self.flow = FlowControl(transport)
        peer = transport.get_extra_info("peername")
        self.ip = peer[0].encode() if peer else b"-"
        self.trusted = self.plane.is_trusted(self.ip)
        if self.proto == b"https":
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                self.tls, self.tls_text = tls_fields(ssl_object)
                if ssl_object.selected_alpn_protocol() == "h2":
                    self._become_h2(transport)
                    return
        self.deadline = entry_deadline(NEW, self.plane.config, self.plane.now())
        if len(self.plane.clients) > self.plane.config.limits.max_connections:
            self.write(error_response(HttpError("too many connections", 503), self.hsts_line))
            self.close()

    def _become_h2(self, transport, data: bytes = b"") -> None:
        """ALPN chose HTTP/2, or the HTTP/2 preface came on an h2c listener: the connection
        is an H2ClientConnection's from now on."""
        conn = H2ClientConnection(self.plane, self.ip, self.trusted, self.tls, self.tls_text, self.own_headers,
                                  self.proto, self.hsts)
        self.plane.clients.discard(self)
        self._to(modes.HTTP2)                    # this HTTP/1.1 side reads no more
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if data:
            conn.data_received(data)

    # Reads go into the buffer the backend connections share (one thread: each read is copied
    # out before the next), READ_BYTES at a time: what a pipelining flood leaves waiting in
    # `unparsed` is one such read, not uvloop's 256 KiB.
    def get_buffer(self, sizehint: int):
        return self.plane.upstreams.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.plane.upstreams.read_buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        """HEAD, BODY, WAITING, IDLE: HTTP requests, parsed here; every other mode has its
        handler in RECEIVE (a request's bytes take no call more than that lookup)."""
        other = RECEIVE.get(self.mode)
        if other is not None:
            other(self, data)
            return
        if self.unparsed:
            self.unparsed += data         # behind requests still waiting to be parsed, in order
            return
        try:
            if len(data) <= PARSE_SLICE and len(self.pending) < MAX_PIPELINED:
                (self.parser or self._new_parser()).feed(data)    # one piece, nothing queued
            else:
                self._parse(data)
        except HttpError as exc:
            self._parse_error(exc)
        except Exception:
            log.exception("bug while handling a client's request; answering 500")
            self._internal_error()
            return
        if self.mode is BODY:
            # Progress moves the body deadline on, but never past what the bytes received so
            # far earn at limits.min_body_rate: a trickle cannot hold both connections.
            self.deadline = body_deadline(self.plane.config, self.plane.now(), self.body_started, self.body_bytes)

    # -- the other modes' handlers (RECEIVE) --------------------------------------------
    def _receive_first(self, data: bytes) -> None:
        """NEW: the first bytes. On an h2c listener they may be HTTP/2's preface."""
        if self.h2c:
            data, self.h2c_held = self.h2c_held + data, b""
            if H2_PREFACE.startswith(data[:len(H2_PREFACE)]):
                if len(data) < len(H2_PREFACE):
                    self.h2c_held = data          # maybe the preface, not yet whole
                    return
                self._become_h2(self.transport, data)
                return
        self._to(modes.FIRST_BYTES)
        self._new_parser()
        self.data_received(data)

    def _new_parser(self):
        limits = self.plane.config.limits
        self.parser = self.plane.request_parser_class(self, limits.max_header_bytes, limits.max_headers,
                                                      limits.max_target_bytes)
        return self.parser

    def rest(self, idle_before: float) -> None:
        """Idle since before `idle_before` (the data plane's sweep): the parser, the last
        request's exchange and head, and lb's header lines for it go (3.4 -> 1.1 KB of Python
        objects a connection, traced); the next request makes them again."""
        if self.mode is IDLE and self.parser is not None and not self.unparsed and self.current is None \
                and self.deadline - self.plane.config.timeouts.client_idle < idle_before:
            self.parser.close()
            self.parser = self.reading = self._own = None

    def _receive_held(self, data: bytes) -> None:
        """HOLDING: the bytes after an Upgrade request wait for the backend's answer."""
        self.held += data
        self.flow.pause("upgrade")

    def _discard(self, data: bytes) -> None:
        """LINGERING, CLOSING_WEBSOCKET: after lb's half-close (a WebSocket's last frames, a
        refused body), dropped, up to a budget."""
        self.discard_budget -= len(data)
        if self.discard_budget < 0:
            self.close()

    def _ignore(self, data: bytes) -> None:
        """ERROR (a bad request waits for its answer's turn), CLOSED: nothing is read."""

    # -- the mode table's side ---------------------------------------------------------
    def _to(self, event: str) -> None:
        """Move to the mode the table gives; a mode with another clock starts its deadline."""
        mode = self.mode
        new = mode.moves.get(event)          # its row of modes.TRANSITIONS
        if new is not mode:
            if new is None:
                next_mode(mode, event)       # raises ModeError
            self.mode = new
            if new.clock is not mode.clock:
                # entry_deadline, inlined for the two clocks every request starts (head, idle)
                seconds = new.seconds
                if seconds is not None:
                    self.deadline = self.plane.now() + seconds(self.plane.config)
                elif new.clock is None:
                    self.deadline = INFINITY
                else:
                    self._restart_clock()

    def _restart_clock(self) -> None:
        mode = self.mode
        now = self.plane.now()
        if mode is BODY:
            self.body_started, self.body_bytes = now, 0
        self.deadline = entry_deadline(mode, self.plane.config, now)

    @property
    def closed(self) -> bool:
        return self.mode is CLOSED

    @property
    def in_tunnel(self) -> bool:
        return self.tunnel is not None

    @property
    def lingering(self) -> bool:
        """lb half-closed and drops what still comes, until the client ends or a deadline."""
        return self.mode is LINGERING or self.mode is CLOSING_WEBSOCKET

    def finish(self, idle_until: float) -> None:
        """lb is stopping: a connection waiting for a request closes by idle_until; one with a
        request in flight gets `Connection: close` on its response (exchange.py)."""
        if self.current is None and self.tunnel is None and self.waiting_for_request:
            self.deadline = min(self.deadline, idle_until)     # the sweeper closes it

    def _parse(self, data: bytes) -> None:
        """Feed the parser, but no further than MAX_PIPELINED waiting requests (HAProxy and
        nginx read the next pipelined request only when the one before is done): outside a
        request body bytes go in PARSE_SLICE pieces, and once the queue is full the rest
        waits in `unparsed`, reading paused, until a request leaves the queue."""
        parser = self.parser or self._new_parser()
        at, size = 0, len(data)         # an offset: slicing off the rest each time is quadratic
        while at < size:
            if len(self.pending) >= MAX_PIPELINED:
                self.unparsed = data[at:]
                self.flow.pause("pipeline")
                return
            reading = self.reading
            if size - at <= PARSE_SLICE or (reading is not None and not reading.request_done):
                piece, at = (data[at:] if at else data), size
            else:
                piece, at = data[at:at + PARSE_SLICE], at + PARSE_SLICE
            parser.feed(piece)
            if at < size and self.mode in STOPS_PARSING:
                self.data_received(data[at:])  # it belongs to an upgrade, or to nobody
                return

    def _parse_unparsed(self) -> None:
        """A request left the queue: what waited behind it goes in as if just read (parsed,
        or handed to an upgrade, or dropped after a bad request), then reading resumes."""
        data, self.unparsed = self.unparsed, b""
        if data:
            self.data_received(data)
        if not self.unparsed:
            self.flow.resume("pipeline")

    def eof_received(self):
        if self.lingering:
            return False          # the client ended its side too: close
        if self.tunnel is not None:
            # Both directions ended: close (connection_lost closes the other side too).
            self.eof_seen = True
            return not self.tunnel.eof_seen and self.tunnel.write_eof()
        reading = self.reading
        if self.current is not None and reading is not None and reading.request_done:
            # A half-close after complete requests: answer them (and any still unparsed),
            # then close.
            self.closing_after_current = True
            return True
        return False

    def connection_lost(self, exc) -> None:
        self._to(modes.LOST)
        self.plane.clients.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
            self.plane.tunnel_closed(self, self.tunnel_route)
        for exchange in (self.current, *self.pending):
            if exchange is not None:
                exchange.client_gone()
        self.current = None
        self.pending.clear()
        # llhttp's callbacks hold the adapter, which holds this connection: freed now, not by the GC
        if self.parser is not None:
            self.parser.close()
        self.parser = self.reading = None
        self.plane.connection_closed()

    def pause_writing(self) -> None:
        self.write_paused = True
        upstream = self._upstream()
        if upstream is not None:
            upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        upstream = self._upstream()
        if upstream is not None:
            upstream.resume_reading()

    def _upstream(self):
        if self.tunnel is not None:
            return self.tunnel
        current = self.current
        return current.upstream if current is not None else None

    # -- parser sink -------------------------------------------------------------
    def on_request_begin(self) -> None:
        if self.mode is IDLE:       # modes.KEEPALIVE_MOVES[0], inlined: the next request's first byte
            self.mode = HEAD
            self.deadline = self.plane.now() + self.plane.config.timeouts.client_header
        else:
            self._to(modes.BEGIN)

    def on_request(self, head: http1.RequestHead) -> None:
        exchange = Exchange(self.plane, self, head)
        self.reading = exchange
        if head.has_body or self.mode is not HEAD:
            self._to(modes.HEAD_WITH_BODY if head.has_body else modes.HEAD_ONLY)
        else:                       # modes.KEEPALIVE_MOVES[1], inlined: a bodiless head, no clock
            self.mode, self.deadline = WAITING, INFINITY
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:
            if self.pending is EMPTY:
                self.pending = deque()
            self.pending.append(exchange)
            if len(self.pending) >= MAX_PIPELINED:
                self.flow.pause("pipeline")

    def on_request_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        self.reading.add_body(data)

    def on_request_end(self) -> None:
        exchange = self.reading
        if self.mode is not WAITING:      # (WAITING, END) stays WAITING: no call for a bodiless request
            self._to(modes.END)
        exchange.end_body()
        if exchange.head.upgrade is not None and not exchange.finished:
            self._to(modes.UPGRADE)

    # -- used by exchanges ---------------------------------------------------------
    def own_headers(self, head) -> bytes:
        """lb's own header lines for a request on this connection (X-Forwarded-*, Forwarded,
        Via): made once per connection and Host, since its requests mostly name one
        (serialize_request 0.74 -> 0.3 µs, bench/hotpath.py); made afresh for a request that
        brings a chain to extend."""
        if http1.chained(head, self.trusted):
            return http1.own_headers(head, self.ip, self.trusted, None, self.proto)
        cached = self._own
        if cached is not None and cached[0] == head.host and cached[1] == head.version:
            return cached[2]
        key = (self.ip, self.proto, head.host, head.version)     # all that lines without a chain depend on
        lines = _OWN_SEEN.get(key)
        if lines is None:
            lines = http1.own_headers(head, self.ip, self.trusted, None, self.proto)
            _OWN_SEEN.put(key, lines, 2 * len(lines))
        self._own = (head.host, head.version, lines)
        return lines

    def send_error(self, exc: HttpError) -> None:
        """lb's own answer to the request in progress."""
        self.write(error_response(exc, self.hsts_line))

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        elif self.mode is not CLOSED and not self.eof_written:
            self.transport.write(data)

    def write_eof(self) -> bool:
        """Half-close towards the client (tunnels); False when not possible."""
        if self.closed or self.eof_written or not self.transport.can_write_eof():
            return False
        self.uncork()
        self.transport.write_eof()
        self.eof_written = True
        return True

    def cork(self) -> None:
        """Hold writes until uncork(): a response head and body go out in one syscall."""
        self._corked = []

    def uncork(self) -> None:
        held, self._corked = self._corked, None
        if held and self.mode is not CLOSED:
            self.transport.write(b"".join(held) if len(held) > 1 else held[0])

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        """The response went out whole (or failed): next request, idle, or close."""
        if exchange is not self.current:
            return
        self.current = None
        if not keep_alive or self.plane.closing:
            reading = self.reading
            if self.deferred_error is not None or (reading is not None and not reading.request_done):
                self.linger()         # the client may still be sending: its request, or more
            else:
                self.close()
            return
        if self.mode is HOLDING:
            self._refused_upgrade()
        if self.pending:
            # Not now: this may run inside the upstream parser's callback, and the
            # next request could take that same connection from the idle pool.
            self.current = self.pending.popleft()
            if self.unparsed:
                self.plane.loop.call_soon(self._parse_unparsed)
            else:
                self.flow.resume("pipeline")
            self.plane.loop.call_soon(self._start_current)
        elif self.deferred_error is not None:
            self._answer_error(self.deferred_error)
        elif self.closing_after_current:
            self.close()
        elif self.mode is WAITING:  # modes.KEEPALIVE_MOVES[2], inlined: answered, nothing more read
            self.mode = IDLE
            self.deadline = self.plane.now() + self.plane.config.timeouts.client_idle
        else:
            self._to(modes.DONE)

    def _start_current(self) -> None:
        if self.current is not None and not self.closed and self.current.route is None \
                and not self.current.finished:
            self.current.start()

    def _refused_upgrade(self) -> None:
        """The backend did not switch: go on parsing HTTP from where the request ended."""
        self._to(modes.REFUSED)
        held, self.held = self.held, b""
        self.parser.leftover += held
        self.flow.resume("upgrade")
        try:
            self.parser.reset()
        except HttpError as exc:
            self._parse_error(exc)

    @property
    def waiting_for_request(self) -> bool:
        """Open with no byte of a next request yet: idle, or new and silent."""
        return self.mode.waiting_for_request

    def close(self) -> None:
        if self.mode is not CLOSED:
            self.uncork()
            self._to(modes.CLOSE)
            self.transport.close()

    def linger(self) -> None:
        """Close after lb's own answer while the client may still be sending (a refused
        body, a trickled head, requests pipelined behind a bad one), as nginx's
        lingering_close: half-close, then read and drop what comes for up to LINGER_S, and
        close at the client's end or then. Closing at once would make the kernel answer those
        bytes with a reset, and a reset can discard the answer from the client's receive
        buffer before it reads it (RFC 9112 section 9.6)."""
        if self.closed or not self.write_eof():
            self.close()
            return
        self._to(modes.LINGER)
        self.discard_budget = LINGER_MAX_BYTES
        self.flow.resume_all()

    def _parse_error(self, exc: HttpError) -> None:
        """A bad request: answered in order, after the good ones before it, then close."""
        self._to(modes.BAD_REQUEST)
        self.flow.pause("error")
        # Kept without its traceback: the frames hold the bytes read (up to 256 KiB) and this
        # connection, a cycle that would wait for the cyclic GC.
        self.deferred_error = exc.with_traceback(None)
        reading = self.reading
        if reading is not None and not reading.request_done:
            # The bad bytes are inside this request's body: it cannot be sent on.
            if reading is self.current:
                reading.fail(exc)
                return
            self.pending.remove(reading)
        if self.current is None:
            self._answer_error(exc)

    def _internal_error(self) -> None:
        """A bug: the request in progress gets a 500 (or is cut if its response began),
        and the connection closes; nothing after it on this connection is read."""
        exc = HttpError("internal error", 500)
        self.flow.pause("error")
        self.deferred_error = exc
        current = self.current
        try:
            if current is not None and not current.finished:
                current.fail(exc)
            else:
                self._answer_error(exc)
        finally:
            self.close()

    def _answer_error(self, exc: HttpError) -> None:
        self.plane.failed[str(exc.status)] += 1
        self.write(error_response(exc, self.hsts_line))
        self.plane.access_log.write_error(self, exc)
        self.linger()

    def on_timeout(self) -> None:
        """A client deadline passed. A 408 goes out in turn, never into the middle of a
        response still streaming: it fails the request being read (the current one, or a
        pipelined one after it), and is answered once what came before it is done."""
        self.deadline = INFINITY
        TIMEOUT.get(self.mode, ClientConnection.close)(self)

    # -- one timeout handler per mode with a clock of its own (TIMEOUT; the others close) ----
    def _head_late(self) -> None:
        self._parse_error(HttpError("request header not received in time", 408))

    def _body_late(self) -> None:
        reading = self.reading
        if reading is None or reading.request_done:
            self.close()
        elif self.flow.held_by("upstream", "buffer"):
            # lb is not reading: its backend is slow to take the body (or not connected
            # yet). The client is not late; its clock starts again.
            self._restart_clock()
        else:
            self._parse_error(HttpError("request body not received in time", 408))



CL = ClientConnection
READING_REQUESTS = (HEAD, BODY, WAITING, IDLE)     # their handler is data_received itself
RECEIVE = {NEW: CL._receive_first, HOLDING: CL._receive_held, TUNNEL: CL._receive_tunnel, ERROR: CL._ignore,
           LINGERING: CL._discard, CLOSING_WEBSOCKET: CL._discard, CLOSED: CL._ignore}
TIMEOUT = {HEAD: CL._head_late, BODY: CL._body_late, TUNNEL: CL._tunnel_idle}
