"""HTTP/2 from clients (ALPN h2 on a TLS listener): h2 does the framing, HPACK and the
stream states; the connection handling, routing and limits are here.

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
refused, malformed, reset by h2 for a flow-control error) counts toward one budget per
second, as do PINGs and SETTINGS each toward theirs: past it the connection gets GOAWAY
ENHANCE_YOUR_CALM (the 2023 rapid-reset attack and 2025's "MadeYouReset", where the server's
own resets were not counted). A request body must come in time, per stream, as over
HTTP/1.1 (else a 408). A connection with no stream for timeouts.client_idle is closed. At
a stop or an upgrade each connection gets GOAWAY with the last stream it will answer, and
closes once those streams are done.
"""

from __future__ import annotations

import weakref
from collections import deque

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidPaddingError
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame

from ..core import h2head
from ..core.errors import HttpError
from ..core.exchange import NO_BODY, RAW, body_deadline
from .exchange import Exchange
from .flow import FlowControl
from .responses import error_fields, pin_cookie_field

INFINITY = float("inf")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"   # what a client with prior knowledge sends first
MAX_CONCURRENT_STREAMS = 100
CONNECTION_WINDOW = 16 << 20
# A stream's unsent response bytes past which its backend pauses; as over HTTP/1.1
# (upstream.WRITE_HIGH_BYTES), a stream that does not read holds this plus one backend read.
# bench/abuse.py h2_slow_reader (1,000 streams never read): at 64 KiB the outboxes held 62 MB,
# at 32 KiB 33 MB (16 KiB: the same, one read); a 100 MiB download ran as fast with either.
STREAM_WRITE_HIGH = 32 * 1024
WRITE_HIGH_BYTES = 256 * 1024          # the transport's own buffer
RESETS_PER_S = 100                     # streams that may end abnormally in a second (reset, refused, malformed)
HPACK_BOMB_FACTOR = 4                  # a decoded header list past this times max_header_bytes: connection error
PINGS_PER_S = 50
FRAMES_PER_TURN = 32                   # frames handled before the loop's other connections get a turn
STRIKES = 3                            # budgets passed (in different seconds) before GOAWAY
HELD_MAX_BYTES = 8 << 20               # unread frames all held-back connections of a worker may keep
SETTINGS_PER_S = 50
DATA_FRAMES = RAW                      # the body mode of an HTTP/2 response with a body: as is, in DATA frames


def _length_is_lbs(*args) -> None:
    return None


class _Connection(h2.connection.H2Connection):
    """h2's connection, except that content-length is lb's to judge: a value that is not
    digits or is given twice (h2head: 400 on the stream) and DATA that does not match it
    (H2Stream.data/request_ended: a stream error, RFC 9113 8.1.1) instead of h2's connection
    errors, which would fail every other stream of the client. This reaches into h2's stream
    (`_initialize_content_length`, `_track_content_length`); tests/e2e/test_h2.py and
    test_h2_framing.py fail if h2 changes them."""

    # How each of the last 1,000 closed streams ended (h2 keeps 65,536): a frame the client
    # sent before it saw lb's RST_STREAM gets a stream error while its stream is remembered,
    # a connection error once forgotten (RFC 9113 5.1 lets that period be limited), and a
    # thousand streams closing while one frame is in flight is a flood. A record is ~176 B:
    # at h2's count a long-lived connection grew to 11 MiB, and bench/abuse.py
    # h2_header_names (20 connections, ~2,000 streams each in 20 s) crept by ~7 MiB.
    MAX_CLOSED_STREAMS = 1000

    @property
    def open_inbound_streams(self) -> int:
        # h2 makes a stream past SETTINGS_MAX_CONCURRENT_STREAMS a connection error, where RFC
        # 9113 5.1.2 asks for a stream error: seeing half the streams, h2 lets twice as many
        # open, and lb refuses those past its limit with REFUSED_STREAM (_request), which a
        # client may retry. Past twice the limit, h2's connection error stands.
        return super().open_inbound_streams // 2

    def receive_frames(self, max_frames: int) -> tuple[list, bool]:
        """h2's receive_data over what `incoming_buffer` holds, at most `max_frames` frames at a
        time: their events, and whether it stopped at the bound (frames may be left). A flood's
        read (256 KiB of PINGs is 15,000 frames) is then handled a slice per loop turn, and the
        budgets (_over) act after a slice instead of after the whole read. This reaches into
        h2's `_receive_frame` and `_terminate_connection`, as receive_data does."""
        events: list = []
        buffer = self.incoming_buffer
        buffer.max_frame_size = self.max_inbound_frame_size
        try:
            for frame in buffer:
                events.extend(self._receive_frame(frame))
                max_frames -= 1
                if not max_frames:
                    return events, True
        except InvalidPaddingError as exc:
            self._terminate_connection(ErrorCodes.PROTOCOL_ERROR)
            raise h2.exceptions.ProtocolError("Received frame with invalid padding.") from exc
        except h2.exceptions.ProtocolError as exc:
            self._terminate_connection(exc.error_code)
            raise
        return events, False

    def _begin_new_stream(self, stream_id, allowed_ids):
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream._initialize_content_length = _length_is_lbs
        stream._track_content_length = _length_is_lbs
        return stream


class _FrameBuffer(FrameBuffer):
    """h2's frame buffer, except that a header block (HEADERS and its CONTINUATION frames) is
    held to `max_block_bytes` as it comes: h2 alone keeps up to 64 frames of 16 KiB (~1 MiB a
    connection) until the block ends. Past it: GOAWAY ENHANCE_YOUR_CALM, as HAProxy does."""

    def __init__(self, max_block_bytes: int):
        super().__init__(server=True)
        self.max_block_bytes = max_block_bytes
        self.block_bytes = 0

    @property
    def held(self) -> int:
        return len(self._data)

    def _update_header_buffer(self, frame):
        if isinstance(frame, (HeadersFrame, ContinuationFrame)):
            self.block_bytes = len(frame.data) + (self.block_bytes if self._headers_buffer else 0)
            if self.block_bytes > self.max_block_bytes:
                raise h2.exceptions.DenialOfServiceError(
                    f"header block over {self.max_block_bytes} bytes (limits.max_header_bytes)")
        return super()._update_header_buffer(frame)


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
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
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
            self.reset(ErrorCodes.INTERNAL_ERROR)
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
        self.reset(ErrorCodes.PROTOCOL_ERROR)
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
            try:
                self.conn.h2.reset_stream(self.id, code)
            except h2.exceptions.StreamClosedError:
                pass
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
        no_body = self.head.method == b"HEAD" or status in (204, 304)
        self.body_mode = NO_BODY if no_body else DATA_FRAMES
        self.status = status
        self.upstream_keep = head.keep_alive
        self.close_delimited = not no_body and head.content_length is None and not head.chunked
        extra = self.client.hsts_fields
        if self.pin_cookie is not None:
            extra = (*extra, pin_cookie_field(self.pin_cookie))
        length = head.content_length if status != 204 else None
        self.client.send_headers(h2head.response_fields(status, head.headers, length, extra))

    def on_response_body(self, data: bytes) -> None:
        if self.body_mode != NO_BODY:
            self.bytes_out += len(data)
            self.client.send_data(data)

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
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_inbound_headers=False, normalize_inbound_headers=False,
                                           validate_outbound_headers=False, normalize_outbound_headers=False)
        self.h2 = _Connection(config=config)
        self.h2.encoder = h2head.ResponseEncoder()
        self.h2.incoming_buffer = _FrameBuffer(limits.max_header_bytes)
        # An HPACK bomb (a few bytes naming a large dynamic-table entry over and over) is a
        # connection error; a list over max_header_bytes below that is a 431 on its stream.
        self.h2.decoder.max_header_list_size = HPACK_BOMB_FACTOR * limits.max_header_bytes
        self.starting: list[H2Stream] = []     # streams whose exchange starts at this read's end
        self.slicing = False                   # a slice of frames is due at the loop's next turn
        self.reading_paused = False
        self.strikes = 0                       # budgets passed (_slow_down)
        self.held = 0                          # bytes of read frames kept while held back
        self.held_until = 0.0                  # held back (not read) until then
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })

    @property
    def waiting_for_request(self) -> bool:
        return not self.streams

    def finish(self, idle_until: float) -> None:
        """lb is stopping: streams in flight finish, then the connection closes."""
        self.go_away()

    # -- asyncio Protocol ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES)
        self.plane.clients.add(self)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._idle()
        self.flush()
        if len(self.plane.clients) > self.plane.config.limits.max_connections:
            self.plane.failed["503"] += 1
            self.go_away()                 # no stream will be answered: the client goes elsewhere

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.h2.incoming_buffer.add_data(data)
        except h2.exceptions.ProtocolError:        # not the preface
            self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR)
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
        except h2.exceptions.ProtocolError:
            # h2 has queued a GOAWAY with the error; nothing more is read
            self.plane.failed["h2_protocol_error"] += 1
            self._fatal()
            return
        self.corked += 1
        try:
            for event in events:
                if self.closed:
                    break
                self._event(event)
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

    # -- events --------------------------------------------------------------------------
    def _event(self, event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.data(event.data, event.flow_controlled_length)
            else:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.request_ended()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.reset_by_client()
            self.ended_abnormally("too many streams reset")
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self.pump(stream)
            else:
                for stream in list(self.streams.values()):
                    self.pump(stream)
        elif isinstance(event, h2.events.PingReceived):
            if self._over("ping", PINGS_PER_S):
                self._slow_down("too many PINGs")
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if self._over("settings", SETTINGS_PER_S):
                self._slow_down("too many SETTINGS")
        elif isinstance(event, h2.events.ConnectionTerminated):
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

    def _request(self, event) -> None:
        stream_id = event.stream_id
        if self.going_away and stream_id > self.last_stream:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= MAX_CONCURRENT_STREAMS:
            self.plane.failed["h2_refused_stream"] += 1
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            self.ended_abnormally("too many streams past the limit")
            return
        has_body = event.stream_ended is None
        try:
            head = h2head.request_head(event.headers, has_body, self.plane.config.limits)
        except h2head.StreamError:
            self.plane.failed["h2_stream_error"] += 1
            self.h2.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
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
                conn.reset_stream(stream.id, ErrorCodes.NO_ERROR)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
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

    def go_away(self, code=ErrorCodes.NO_ERROR) -> None:
        """GOAWAY with the last stream lb will answer; the connection closes once those are
        done. Written by hand: after h2's own GOAWAY no stream may send another frame."""
        if self.closed:
            return
        self.going_away = True
        self.last_stream = self.h2.highest_inbound_stream_id
        self.flush()
        self.transport.write(GoAwayFrame(0, last_stream_id=self.last_stream, error_code=code).serialize())
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
        held = self.h2.incoming_buffer.held
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
        self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, additional_data=why.encode())
        self._fatal()

    def _fatal(self) -> None:
        """h2 has queued its GOAWAY: send it, drop every stream, close."""
        self.flush()
        for stream in list(self.streams.values()):
            stream.reset_by_client()
        self.streams.clear()
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
