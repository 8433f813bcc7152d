"""HTTP/2 from clients (ALPN h2 on a TLS listener, or h2c with prior knowledge): lb's sans-IO
connection (lb/core/http2/connection.py) does the framing, HPACK and the stream states; the
connection handling, routing and limits are here.

One `H2ClientConnection` per connection. Each request is a stream, and each stream is an
`H2Stream`: the `client` its exchange (an `H2Exchange`) talks to, as an HTTP/1.1 exchange
talks to its ClientConnection, so balancing, pinning, retries, drain, stats and the access
log see it as any request. Streams of one connection go to different backends, over the
same HTTP/1.1 upstream pools.

Flow control, both ways, per stream:
- request bodies: a DATA frame is acknowledged (its window handed back) once the exchange
  took it; while the exchange or its upstream cannot take more (`flow` paused), the
  acknowledgement waits, so a client can have at most one stream window (64 KiB) unread per
  stream. The connection window is large (CONNECTION_WINDOW) so one stalled stream does not
  stall the others.
- responses: what the client's stream window does not let out waits in the stream's outbox;
  past STREAM_WRITE_HIGH the stream's upstream stops being read, and reading resumes when it
  drains. A slow stream pauses its own backend, never the connection.

Frames are handled FRAMES_PER_TURN at a time (a slice); the rest of a read waits for the
loop's next turn, with reading paused, so a flood's read never holds the worker up, and the
budgets below act after a slice instead of after a whole read. A stream's exchange starts
once the whole read that brought its HEADERS is handled: DATA and END_STREAM in the same
read are known before anything is sent upstream, so a request
already malformed (a content-length its DATA breaks) never opens a backend connection, and
a body that is whole gets a Content-Length upstream (h2head.body_framing: else chunked).

Limits: MAX_CONCURRENT_STREAMS (a stream past it is refused: REFUSED_STREAM); a header
block (HEADERS and its CONTINUATIONs, as received) past limits.max_header_bytes is a
connection error at once (the 2024 CONTINUATION flood), and the decoded list past
HPACK_BOMB_FACTOR times it too (an HPACK bomb); below that, the HTTP/1.1 limits answer on
the stream (431, 414: h2head). Every stream that ends abnormally (reset by the client,
refused, malformed, reset by lb's connection for a stream error) counts toward one budget per
second, as do PINGs and SETTINGS each toward theirs: past it the connection gets GOAWAY
ENHANCE_YOUR_CALM (the 2023 rapid-reset attack and 2025's "MadeYouReset", where the server's
own resets were not counted). A request body must come in time, per stream, as over
HTTP/1.1 (else a 408). A connection with no stream for timeouts.client_idle is closed. At
a stop or an upgrade each connection gets GOAWAY with the last stream it will answer, and
closes once those streams are done.
"""

from __future__ import annotations

from ..core import h2head
from ..core.errors import HttpError
from ..core.http2 import connection as http2
from ..core.http2.frames import ErrorCode
from ..core.http2.streams import StreamClosedError
from .h2stream import H2Exchange, H2Stream

INFINITY = float("inf")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"   # what a client with prior knowledge sends first
MAX_CONCURRENT_STREAMS = 100
CONNECTION_WINDOW = 16 << 20
WRITE_HIGH_BYTES = 256 * 1024          # the transport's own buffer
RESETS_PER_S = 100                     # streams that may end abnormally in a second (reset, refused, malformed)
HPACK_BOMB_FACTOR = 4                  # a decoded header list past this times max_header_bytes: connection error
PINGS_PER_S = 50
FRAMES_PER_TURN = 32                   # frames handled before the loop's other connections get a turn
STRIKES = 3                            # budgets passed (in different seconds) before GOAWAY
HELD_MAX_BYTES = 8 << 20               # unread frames all held-back connections of a worker may keep
SETTINGS_PER_S = 50

class H2ClientConnection:
    """One client connection speaking HTTP/2 (an asyncio Protocol)."""

    h2 = True
    in_tunnel = False              # no tunnels over HTTP/2, and no lingering close
    lingering = False              # (the data plane's Client, lb/core/seams.py)

    def __init__(self, plane, ip: bytes, trusted: bool, tls: dict | None, tls_text: str, own_headers,
                 proto: bytes = b"https", hsts: bytes = b""):
        self.plane = plane
        self.ip, self.trusted, self.proto = ip, trusted, proto
        self.tls, self.tls_text = tls, tls_text
        # lb's own fields on every response: Strict-Transport-Security when the listener sets it
        self.hsts_fields = ((b"strict-transport-security", hsts),) if hsts else ()
        self.own_headers = own_headers          # lb's own request lines, made once per Host
        self.transport = None
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.going_away = False
        self.last_stream = 0           # past GOAWAY: streams above it are refused
        self.corked = 0
        self.dirty: set[H2Stream] = set()      # streams with something to send at the next flush
        self._flush_pending = False
        self.write_blocked = False
        self.deadline = INFINITY
        self._counts = {"reset": [0, 0.0], "ping": [0, 0.0], "settings": [0, 0.0]}
        limits = plane.config.limits
        # An HPACK bomb (a few bytes naming a large dynamic-table entry over and over) is a
        # connection error; a list over max_header_bytes below that is a 431 on its stream.
        self.h2 = http2.ServerConnection(h2head.ResponseEncoder(), limits.max_header_bytes,
                                         HPACK_BOMB_FACTOR * limits.max_header_bytes, MAX_CONCURRENT_STREAMS,
                                         CONNECTION_WINDOW)
        self.starting: list[H2Stream] = []     # streams whose exchange starts at this read's end
        self.slicing = False                   # a slice of frames is due at the loop's next turn
        self.reading_paused = False
        self.strikes = 0                       # budgets passed (_slow_down)
        self.held = 0                          # bytes of read frames kept while held back
        self.held_until = 0.0                  # held back (not read) until then

    @property
    def waiting_for_request(self) -> bool:
        return not self.streams

    def rest(self, idle_before: float) -> None:
        """Nothing to give back: an HTTP/2 connection's state is what its streams need."""

    def finish(self, idle_until: float) -> None:
        """lb is stopping: streams in flight finish, then the connection closes."""
        self.go_away()

    # -- asyncio Protocol ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES)
        self.plane.clients.add(self)
        self.h2.initiate_connection()
        self._idle()
        self.flush()
        if len(self.plane.clients) > self.plane.config.limits.max_connections:
            self.plane.failed["503"] += 1
            self.go_away()                 # no stream will be answered: the client goes elsewhere

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.h2.feed(data)
        except http2.ProtocolError:                # not the preface: GOAWAY is queued
            self.plane.failed["h2_protocol_error"] += 1
            self._fatal()
            return
        if not self.slicing and not self.held_until:
            self._handle_frames()

    def _handle_frames(self) -> None:
        """Handle up to FRAMES_PER_TURN frames of what came; if more may be left, stop reading
        and handle the next slice at the loop's next turn, after the other connections'."""
        self.slicing = False
        if self.closed:
            return
        try:
            events, more = self.h2.receive_frames(FRAMES_PER_TURN)
        except http2.ProtocolError:
            # a GOAWAY with the error is queued; nothing more is read
            self.plane.failed["h2_protocol_error"] += 1
            self._fatal()
            return
        self.corked += 1
        try:
            handlers = EVENT_HANDLERS
            for event in events:
                if self.closed:
                    break
                handlers[event[0]](self, event)
            if not more:                       # the read is handled: its streams start
                starting, self.starting = self.starting, []
                for stream in starting:
                    if not self.closed:
                        self._start(stream)
        finally:
            self.corked -= 1
        if self.closed:
            return
        self.flush_soon()
        if self.held_until:
            return                                 # _release goes on
        if more:
            self.slicing = True
            if not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
            self.plane.loop.call_soon(self._handle_frames)
        elif self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.plane.clients.discard(self)
        for stream in list(self.streams.values()):
            stream.reset_by_client()
        self.streams.clear()
        self.plane.connection_closed()

    def pause_writing(self) -> None:
        self.write_blocked = True

    def resume_writing(self) -> None:
        self.write_blocked = False
        for stream in list(self.streams.values()):
            self.pump(stream)
        self.flush()

    # -- events (EVENT_HANDLERS: each kind of lb/core/http2/connection.py's events) -----------
    def _on_request(self, event) -> None:
        _, stream_id, headers, ended = event
        self._request(stream_id, headers, not ended)

    def _on_data(self, event) -> None:
        _, stream_id, data, flow_length, ended = event
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.data(data, flow_length)
        else:
            self.h2.acknowledge_received_data(flow_length, stream_id)
        if ended:
            self._request_ended(stream_id)

    def _on_trailers(self, event) -> None:
        self._request_ended(event[1])              # trailers are not forwarded; they end the request

    def _request_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)       # again: data() may have reset it
        if stream is not None:
            stream.request_ended()

    def _on_reset(self, event) -> None:
        stream = self.streams.pop(event[1], None)
        if stream is not None:
            stream.reset_by_client()
        self.ended_abnormally("too many streams reset")

    def _on_window(self, event) -> None:
        if event[1]:
            stream = self.streams.get(event[1])
            if stream is not None:
                self.pump(stream)
        else:
            for stream in list(self.streams.values()):
                self.pump(stream)

    def _on_ping(self, event) -> None:
        if self._over("ping", PINGS_PER_S):
            self._slow_down("too many PINGs")

    def _on_settings(self, event) -> None:
        if self._over("settings", SETTINGS_PER_S):
            self._slow_down("too many SETTINGS")

    def _on_goaway(self, event) -> None:
        """The client goes away: the streams it opened finish, and then the connection closes
        (h2 refused every frame after a GOAWAY, and every send: lb's responses were cut)."""
        self.going_away = True
        self.last_stream = self.h2.highest_inbound_stream_id
        if not self.streams:
            self._close()

    def _over(self, kind: str, per_s: int) -> bool:
        count = self._counts[kind]
        now = self.plane.now()
        if now - count[1] >= 1.0:
            count[0], count[1] = 0, now
        count[0] += 1
        return count[0] > per_s

    def _request(self, stream_id: int, headers: list, has_body: bool) -> None:
        if self.going_away and stream_id > self.last_stream:
            self.h2.reset_stream(stream_id, ErrorCode.REFUSED_STREAM)
            return
        if len(self.streams) >= MAX_CONCURRENT_STREAMS:
            self.plane.failed["h2_refused_stream"] += 1
            self.h2.reset_stream(stream_id, ErrorCode.REFUSED_STREAM)
            self.ended_abnormally("too many streams past the limit")
            return
        try:
            head = h2head.request_head(headers, has_body, self.plane.config.limits)
        except h2head.StreamError:
            self.plane.failed["h2_stream_error"] += 1
            self.h2.reset_stream(stream_id, ErrorCode.PROTOCOL_ERROR)
            self.ended_abnormally("malformed requests")
            return
        except HttpError as exc:
            stream = self.streams[stream_id] = H2Stream(self, stream_id, None)
            stream.client_ended = not has_body
            self.plane.failed[str(exc.status)] += 1
            self.plane.access_log.write_error(stream, exc)
            stream.send_error(exc)
            stream.exchange_done(None, False)
            return
        stream = self.streams[stream_id] = H2Stream(self, stream_id, head.content_length if has_body else None, head)
        stream.client_ended = not has_body
        if len(self.streams) == 1:
            self.deadline = INFINITY           # not idle; what is left is the streams' body deadlines
        if has_body:
            stream.expect_body()
        self.starting.append(stream)

    def _start(self, stream: H2Stream) -> None:
        """The stream's exchange, once the read that brought its HEADERS is handled (all its
        slices): its body's framing upstream is decided on what came in that read
        (h2head.body_framing)."""
        head, stream.head = stream.head, None
        if head is None or stream.closed:
            return                             # malformed or reset in the same read
        if stream.expected_length is not None or stream.early or not stream.client_ended:
            try:
                head.content_length, head.chunked = h2head.body_framing(
                    stream.expected_length, stream.received, stream.client_ended)
            except h2head.StreamError as exc:
                stream.malformed(exc.message)
                return
        exchange = stream.exchange = H2Exchange(self.plane, stream, head)
        exchange.start()
        early, stream.early = stream.early, []
        for piece in early:
            exchange.add_body(piece)
        if stream.client_ended and not exchange.finished:
            exchange.end_body()
        if not stream.flow.paused:
            stream.acknowledge_held()

    def ended_abnormally(self, why: str) -> None:
        """A stream ended abnormally (reset by either side, refused, malformed): past
        RESETS_PER_S of them in a second, the connection is closed (GOAWAY ENHANCE_YOUR_CALM)."""
        if self._over("reset", RESETS_PER_S) and not self.closed:
            self._slow_down(why)

    # -- sending -------------------------------------------------------------------------
    def pump(self, stream: H2Stream) -> None:
        """Send what the stream's and the connection's windows let out of its outbox."""
        if self.write_blocked or stream.closed:
            return
        conn = self.h2
        outbox = stream.outbox
        try:
            while outbox:
                window = min(conn.local_flow_control_window(stream.id), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                data = outbox[0]
                if len(data) > window:
                    outbox[0] = data[window:]
                    data = data[:window]
                else:
                    outbox.popleft()
                stream.outbox_bytes -= len(data)
                last = not outbox and stream.end_pending
                conn.send_data(stream.id, data, end_stream=last)    # the last DATA ends the stream
                if last:
                    stream.ended = True
            if not outbox and stream.end_pending and not stream.ended:
                stream.ended = True
                conn.end_stream(stream.id)
            if stream.ended and not stream.client_ended:
                # The response is whole and the request is not (a 408, a backend that answered
                # early): the client may stop sending (RFC 9113 8.1), and the stream is closed.
                stream.closed = True
                stream.body_deadline = INFINITY
                conn.reset_stream(stream.id, ErrorCode.NO_ERROR)
        except StreamClosedError:
            stream.closed = True
            outbox.clear()
            stream.outbox_bytes = 0
        stream.drained()
        self.flush_soon()
        if stream.done and (stream.ended or stream.closed):
            self.stream_done(stream)

    def schedule(self, stream: H2Stream) -> None:
        """Send from the stream's outbox at the next flush: a response that came whole in
        one backend read goes out as HEADERS and one DATA frame that ends the stream."""
        self.dirty.add(stream)
        self.flush_soon()

    def flush_soon(self) -> None:
        if not self.corked and not self._flush_pending:
            self._flush_pending = True
            self.plane.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_pending = True           # what the pumps below send goes out in this write
        while self.dirty:
            dirty, self.dirty = self.dirty, set()
            for stream in dirty:
                self.pump(stream)
        self._flush_pending = False
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    # -- the end of streams and of the connection --------------------------------------
    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        if not self.streams:
            if self.going_away:
                self.flush()
                self._close()
            else:
                self._idle()

    def _idle(self) -> None:
        self.deadline = self.plane.now() + (self.plane.config.timeouts.client_idle if self.h2.highest_inbound_stream_id
                                            else self.plane.config.timeouts.client_header)

    def on_timeout(self) -> None:
        """The idle deadline (no stream), or the earliest stream body deadline: those past
        due get a 408 (as over HTTP/1.1); the next one is the connection's deadline."""
        self.deadline = INFINITY
        if not self.streams:
            self.go_away()
            return
        now = self.plane.now()
        for stream in [s for s in self.streams.values() if s.body_deadline <= now]:
            stream.body_deadline = INFINITY
            if stream.exchange is not None and not stream.exchange.finished:
                stream.exchange.fail(HttpError("request body not received in time", 408))
        if self.streams:
            self.deadline = min(s.body_deadline for s in self.streams.values())
        self.flush_soon()

    def go_away(self, code=ErrorCode.NO_ERROR) -> None:
        """GOAWAY with the last stream lb will answer; the connection closes once those are
        done (send_goaway: the streams up to it may still send)."""
        if self.closed:
            return
        self.going_away = True
        self.last_stream = self.h2.highest_inbound_stream_id
        self.flush()
        self.h2.send_goaway(self.last_stream, code)
        self.transport.write(self.h2.data_to_send())
        if not self.streams:
            self._close()

    def _slow_down(self, why: str) -> None:
        """A budget is passed: the connection is not read for the rest of that second (its
        frames wait in the kernel, and a client that does not read our ACKs stalls itself, as
        HAProxy's does); the STRIKES-th time, or when held-back connections would keep more
        than HELD_MAX_BYTES of read frames, GOAWAY ENHANCE_YOUR_CALM. Closing at once invited
        the attacker to open another connection and flood again: 613 a second in the PING
        flood of bench/abuse.py, each one's setup costing the worker more than its frames."""
        self.strikes += 1
        if self.held_until:
            return                                 # a second budget in the same slice
        held = self.h2.buffered
        if self.strikes >= STRIKES or self.plane.h2_held + held > HELD_MAX_BYTES:
            self._calm_down(why)
            return
        self.plane.failed["h2_slowed"] += 1
        self.held, self.plane.h2_held = held, self.plane.h2_held + held
        self.held_until = max(count[1] for count in self._counts.values()) + 1.0
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self.plane.loop.call_later(max(0.0, self.held_until - self.plane.now()), self._release)

    def _release(self) -> None:
        self.plane.h2_held -= self.held
        self.held, self.held_until = 0, 0.0
        if not self.closed and not self.slicing:
            self.slicing = True
            self.plane.loop.call_soon(self._handle_frames)

    def _calm_down(self, why: str) -> None:
        self.plane.failed["h2_flood"] += 1
        self.h2.close_connection(ErrorCode.ENHANCE_YOUR_CALM, additional_data=why.encode())
        self._fatal()

    def _fatal(self) -> None:
        """A GOAWAY that ends the connection is queued: send it, drop every stream, close."""
        self.flush()
        for stream in list(self.streams.values()):
            stream.reset_by_client()
        self.streams.clear()
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()


# What the connection does with each kind of event of lb/core/http2/connection.py.
EVENT_HANDLERS = {
    http2.REQUEST: H2ClientConnection._on_request, http2.DATA: H2ClientConnection._on_data,
    http2.TRAILERS: H2ClientConnection._on_trailers, http2.RESET: H2ClientConnection._on_reset,
    http2.WINDOW: H2ClientConnection._on_window, http2.PING: H2ClientConnection._on_ping,
    http2.SETTINGS: H2ClientConnection._on_settings, http2.GOAWAY: H2ClientConnection._on_goaway,
}
