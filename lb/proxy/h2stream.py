"""An HTTP/2 request: `H2Stream` is the `client` its exchange (an `H2Exchange`) talks to, as
an HTTP/1.1 exchange talks to its ClientConnection; `StreamFlow` holds back the window
updates of its DATA while the exchange cannot take more. The connection that owns the
streams is lb/proxy/h2client.py (the module docstring there tells the flow control)."""

from __future__ import annotations

import weakref
from collections import deque

from ..core import h2head
from ..core.errors import HttpError
from ..core.exchange import NO_BODY, RAW, body_deadline
from ..core.http2.frames import ErrorCode
from ..core.http2.streams import StreamClosedError
from .exchange import Exchange
from .flow import FlowControl
from ..core.skew import GONE_HEADER
from .responses import error_fields, pin_cookie_field

INFINITY = float("inf")
# A stream's unsent response bytes past which its backend pauses; as over HTTP/1.1
# (upstream.WRITE_HIGH_BYTES), a stream that does not read holds this plus one backend read.
# bench/abuse.py h2_slow_reader (1,000 streams never read): at 64 KiB the outboxes held 62 MB,
# at 32 KiB 33 MB (16 KiB: the same, one read); a 100 MiB download ran as fast with either.
STREAM_WRITE_HIGH = 32 * 1024
DATA_FRAMES = RAW                      # the body mode of an HTTP/2 response with a body: as is, in DATA frames


class StreamFlow(FlowControl):
    """The `flow` of an H2Stream: while any named reason holds, DATA it receives is not
    acknowledged (the client's window for the stream stays shut); then what was held is.
    It holds its stream by a weak reference: the stream holds it, and a cycle would keep
    every finished stream until the cyclic GC (see H2Stream.exchange_done)."""

    __slots__ = ()

    def __init__(self, stream: "H2Stream"):
        super().__init__(weakref.ref(stream))

    def _stop(self) -> None:
        # H2Stream.data holds the acknowledgements while paused; the client cannot send, so
        # its body deadline waits too
        self._target().body_paused()

    def _go(self) -> None:
        stream = self._target()
        stream.acknowledge_held()
        stream.body_resumed()


class H2Stream:
    """One request of an HTTP/2 connection, as its exchange sees the client."""

    redirect = False
    h2 = True

    def __init__(self, conn, stream_id: int, expected_length: int | None, head=None):
        self.conn = conn
        self.head = head               # until the exchange starts (the end of the read that brought it)
        self.early: list[bytes] = []   # DATA that came before the exchange started
        self.id = stream_id
        self.plane = conn.plane
        self.ip, self.trusted, self.proto = conn.ip, conn.trusted, conn.proto
        self.tls, self.tls_text = conn.tls, conn.tls_text
        self.hsts_fields = conn.hsts_fields
        self.flow = StreamFlow(self)
        self.exchange: Exchange | None = None
        self.closed = False            # reset (by either side), or the connection is gone
        self.write_paused = False
        self.held_ack = 0              # DATA bytes received and not yet acknowledged
        self.received = 0
        self.body_started = 0.0
        self.body_received = 0         # since body_started (min_body_rate)
        self.body_deadline = INFINITY  # while the request body is expected
        self.expected_length = expected_length
        self.outbox: deque[bytes] = deque()
        self.outbox_bytes = 0
        self.end_pending = False       # END_STREAM goes after the outbox
        self.ended = False             # END_STREAM sent
        self.client_ended = False      # the client's END_STREAM came (the request is whole)
        self.done = False              # the exchange is over (the outbox may still be sending)

    # -- what an exchange and its upstream use ----------------------------------------
    def own_headers(self, head) -> bytes:
        return self.conn.own_headers(head)

    def cork(self) -> None:
        self.conn.corked += 1

    def uncork(self) -> None:
        # One write per loop turn for every stream of the connection: the responses of many
        # backends' reads go out in one TLS write (with `schedule`'s one-DATA-frame ending,
        # bench/throughput.py --h2: 145 -> ~100 µs per request).
        self.conn.corked -= 1
        self.conn.flush_soon()

    def send_headers(self, fields: list) -> None:
        if not self.closed:
            try:
                self.conn.h2.send_headers(self.id, fields)
            except StreamClosedError:
                self.closed = True             # reset meanwhile: nothing more goes to it
                return
            self.conn.flush_soon()

    def send_data(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.outbox.append(data)
        self.outbox_bytes += len(data)
        self.conn.schedule(self)
        if self.outbox_bytes > STREAM_WRITE_HIGH and not self.write_paused:
            self.write_paused = True
            upstream = self.exchange.upstream if self.exchange is not None else None
            if upstream is not None:
                upstream.pause_reading()

    def end(self) -> None:
        if not self.closed and not self.end_pending:
            self.end_pending = True
            self.conn.schedule(self)

    def send_error(self, exc: HttpError) -> None:
        """lb's own answer (a 502, a 503...), as an HTTP/1.1 client would get it."""
        fields, body = error_fields(exc, self.hsts_fields)
        self.send_headers(fields)
        self.send_data(body)
        self.end()

    def exchange_done(self, exchange, keep_alive: bool) -> None:
        """The exchange is over: a stream whose response did not end whole is reset. The
        stream stays the connection's until its END_STREAM is out (or it is reset)."""
        # The exchange points back at its stream: left here, the pair and the request head
        # (up to limits.max_header_bytes, twice: parsed and serialized) would wait for the
        # cyclic GC. With 200 streams in flight they outlive the young generation, and an
        # attacker's 15 KB header names grew a worker by ~60 MiB (bench/abuse.py
        # h2_header_names); dropped here, they go when the exchange does.
        self.exchange = None
        self.done = True
        if not self.end_pending and not self.closed:
            self.reset(ErrorCode.INTERNAL_ERROR)
        if self.ended or self.closed:
            self.conn.stream_done(self)

    # -- from the connection -------------------------------------------------------------
    def expect_body(self) -> None:
        """The request has a body: it must come in time (timeouts.client_idle between pieces,
        limits.min_body_rate on average, as over HTTP/1.1), or the stream gets a 408."""
        self.body_started = now = self.plane.now()
        self.body_received = 0
        self.body_deadline = body_deadline(self.plane.config, now, now, 0)
        self.conn.deadline = min(self.conn.deadline, self.body_deadline)

    def body_paused(self) -> None:
        self.body_deadline = INFINITY              # lb, not the client, holds the body up

    def body_resumed(self) -> None:
        if not self.closed and self.exchange is not None and not self.exchange.request_done:
            self.expect_body()

    def data(self, data: bytes, flow_length: int) -> None:
        self.received += len(data)
        if self.body_deadline != INFINITY:
            self.body_received += len(data)
            self.body_deadline = body_deadline(self.plane.config, self.plane.now(), self.body_started,
                                               self.body_received)
        exchange = self.exchange
        if self.expected_length is not None and self.received > self.expected_length:
            self.malformed("more DATA than content-length")
            return
        if self.head is not None and not self.closed:      # the exchange starts at the read's end
            self.early.append(data)
            self.held_ack += flow_length
            return
        if exchange is not None and not exchange.finished and not self.closed:
            exchange.add_body(data)
            if self.flow.paused:
                self.held_ack += flow_length
                return
        self.conn.h2.acknowledge_received_data(flow_length, self.id)

    def request_ended(self) -> None:
        self.client_ended = True
        self.body_deadline = INFINITY
        if self.expected_length is not None and self.received != self.expected_length:
            self.malformed("DATA shorter than content-length")
            return
        if self.exchange is not None and not self.exchange.finished:
            self.exchange.end_body()

    def acknowledge_held(self) -> None:
        held, self.held_ack = self.held_ack, 0
        if held and not self.closed:
            self.conn.h2.acknowledge_received_data(held, self.id)
            self.conn.flush_soon()

    def malformed(self, why: str) -> None:
        """RFC 9113 8.1.1: a malformed request is a stream error, and is not sent on. An
        exchange already under way ends, and its backend connection with it (never reused)."""
        self.plane.failed["h2_stream_error"] += 1
        self.reset(ErrorCode.PROTOCOL_ERROR)
        if self.exchange is not None:
            self.exchange.fail(HttpError(f"malformed HTTP/2 request: {why}", 400))
        elif not self.done:
            self.done = True               # it never started: nothing went upstream
            self.head = None
            self.conn.stream_done(self)
        self.conn.ended_abnormally("malformed requests")

    def reset(self, code) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.clear()
            self.outbox_bytes = 0
            self.conn.h2.reset_stream(self.id, code)      # nothing if the connection has it closed
            self.conn.flush_soon()
            if self.done:
                self.conn.stream_done(self)

    def reset_by_client(self) -> None:
        """The client reset the stream, or went away: what it asked is not worth finishing."""
        self.closed = True
        self.outbox.clear()
        self.outbox_bytes = 0
        exchange, self.exchange = self.exchange, None       # no cycle left behind (exchange_done)
        if exchange is not None and not exchange.finished:
            exchange.client_gone()

    def drained(self) -> None:
        """Called by the connection after it sent from the outbox."""
        if self.write_paused and self.outbox_bytes <= STREAM_WRITE_HIGH // 2:
            self.write_paused = False
            upstream = self.exchange.upstream if self.exchange is not None else None
            if upstream is not None:
                upstream.resume_reading()


class H2Exchange(Exchange):
    """An exchange whose client is an HTTP/2 stream: the response goes out as HEADERS and
    DATA frames instead of HTTP/1.1 bytes; everything else is Exchange's."""

    __slots__ = ()

    def _interim(self, head) -> None:
        if head.status == 101:
            raise HttpError("backend switched protocols without being asked", 502)
        # other 1xx are not forwarded over HTTP/2 (100-continue is between lb and the backend)

    def on_response(self, head) -> None:
        status = head.status
        if status < 200:
            self._interim(head)
            return
        if status == 404 and self.fallback is not None and self._fall_back():
            return
        no_body = self.head.method == b"HEAD" or status in (204, 304)
        self.body_mode = NO_BODY if no_body else DATA_FRAMES
        self.status = status
        self.upstream_keep = head.keep_alive
        self.close_delimited = not no_body and head.content_length is None and not head.chunked
        extra = self.client.hsts_fields
        if self.pin_cookie is not None:
            extra = (*extra, pin_cookie_field(self.pin_cookie))
        if self.gone is not None:
            extra = (*extra, (GONE_HEADER, self.gone.encode()))
        if status == 200 and (head.cache_control is not None or self.plane.skew_globs):
            self._learn(head)
        length = head.content_length if status != 204 else None
        self.client.send_headers(h2head.response_fields(status, head.headers, length, extra))

    def on_response_body(self, data: bytes) -> None:
        if self.body_mode != NO_BODY:
            self.bytes_out += len(data)
            self.client.send_data(data)
            if self.capture is not None:
                self._copy(data)

    def _end_own_answer(self) -> None:
        self.client.end()

    def on_response_end(self) -> None:
        self.client.end()
        self._done(reusable=self.request_done and self.upstream_keep)
        self.client.exchange_done(self, False)

    def upstream_lost(self, conn) -> None:
        if conn is self.upstream and not self.finished and self.close_delimited:
            self.client.end()              # the backend's close ends this body
            self._done(reusable=False)
            self.client.exchange_done(self, False)
            return
        super().upstream_lost(conn)
