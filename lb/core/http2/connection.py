"""The server side of an HTTP/2 connection (RFC 9113): bytes in, events out; calls in, bytes
out. No I/O.

Theory of operation
-------------------
The caller (lb/proxy/h2client.py) owns the socket. It hands over what it reads (`feed`), then
takes the events of at most n frames at a time (`receive_frames(n)` -> (events, more)): a
flood's read is handled a slice per loop turn, and lb's budgets act between slices. It acts
on the events with `send_headers`, `send_data`, `end_stream`, `reset_stream` and
`acknowledge_received_data`, and writes what they queued (`data_to_send`).

`feed` checks the preface; frames.FrameReader cuts and checks each frame (and assembles a
header block, held to max_header_bytes: ENHANCE_YOUR_CALM past it); hpack.Decoder decodes
each block, whatever becomes of its stream, so that HPACK stays in step. Each frame type has
its handler (`HANDLERS`), which applies the stream rules (streams.py): a new stream id must
be odd and above every earlier one; a frame on an idle stream is a connection error; on a
closed stream it is a stream error or a connection error as the stream ended (5.1). Flow
control both ways: DATA past the connection's or a stream's receive window, and a
WINDOW_UPDATE or SETTINGS_INITIAL_WINDOW_SIZE that takes a send window past 2^31-1, are
FLOW_CONTROL_ERROR (a stream's WINDOW_UPDATE resets that stream only).

A connection error queues GOAWAY with its code and raises ProtocolError: the caller sends
what is queued and closes, and the connection reads nothing more. A stream error queues
RST_STREAM; if lb had the stream open, a RESET event (remote False) tells the caller, which
drops the stream and counts it. lb resets a stream itself with `reset_stream` (a no-op on a
stream already closed: RFC 9113 5.4.2 forbids answering a reset with a reset).

What is left to the caller: the HTTP semantics of a header list (lb/core/h2head.py: a
malformed request, content-length and the DATA that must match it), refusing streams past
its own limit (REFUSED_STREAM; this connection lets twice MAX_CONCURRENT_STREAMS open before
a connection error, so a client that opens many at once is refused stream by stream), the
budgets against floods, and what a GOAWAY it received means for its streams.

Events are tuples, kind first, unpacked by position (a frame's tuple costs ~30 ns to build,
a class instance ~250): see EVENT_FIELDS. h2's StreamEnded comes as the `ended` field of
REQUEST and DATA (and a TRAILERS event always ends its stream); h2's SettingsAcknowledged,
PingAckReceived, PriorityUpdated and UnknownFrameReceived, which lb never read, are not made.
"""

from __future__ import annotations

from typing import NoReturn

from ..errors import LbError
from . import frames as f
from .frames import ErrorCode, FrameError, Setting
from .hpack import Decoder, HeaderListTooLarge, HpackError
from .streams import (HALF_CLOSED_LOCAL, HALF_CLOSED_REMOTE, OPEN, RECEIVES, RECV_END, RECV_RESET, SEND_END,
                      SEND_RESET, SENDS, ClosedStreams, ReceiveWindow, Stream, StreamClosedError)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535                  # SETTINGS_INITIAL_WINDOW_SIZE's initial value, and the connection's

# Event kinds, and each event's fields after the kind.
REQUEST = 0         # (stream_id, headers, ended): a request's header list; ended: END_STREAM with it
DATA = 1            # (stream_id, data, flow_length, ended): flow_length counts padding (acknowledge that)
TRAILERS = 2        # (stream_id, headers): trailers, which end the stream
RESET = 3           # (stream_id, error_code, remote): remote False when lb reset it for a stream error
WINDOW = 4          # (stream_id, increment): a send window grew (stream 0: the connection's)
PING = 5            # (opaque_data,): its ACK is queued already
SETTINGS = 6        # (settings,): the client's SETTINGS {identifier: value}, applied and acknowledged
GOAWAY = 7          # (error_code, last_stream_id, debug_data)
EVENT_FIELDS = {REQUEST: ("stream_id", "headers", "ended"), DATA: ("stream_id", "data", "flow_length", "ended"),
                TRAILERS: ("stream_id", "headers"), RESET: ("stream_id", "error_code", "remote"),
                WINDOW: ("stream_id", "increment"), PING: ("opaque_data",), SETTINGS: ("settings",),
                GOAWAY: ("error_code", "last_stream_id", "debug_data")}


class ProtocolError(LbError):
    """A connection error: GOAWAY with `code` is queued, and the connection is over."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class ServerConnection:
    """One HTTP/2 connection from a client (see the module's docstring). `encoder` encodes
    lb's header lists (h2head.ResponseEncoder: `encode(fields)`, `header_table_size`);
    `max_header_bytes` bounds a header block as received (and is the advertised
    SETTINGS_MAX_HEADER_LIST_SIZE); `max_header_list_size` bounds a decoded list (an HPACK
    bomb past it); `connection_window` is the receive window of the whole connection."""

    def __init__(self, encoder, max_header_bytes: int = 16384, max_header_list_size: int = 65536,
                 max_concurrent_streams: int = 100, connection_window: int = DEFAULT_WINDOW):
        self.encoder = encoder
        self.streams: dict[int, Stream] = {}            # the streams not closed
        self.closed_streams = ClosedStreams()
        self.highest_inbound_stream_id = 0
        self.max_concurrent_streams = max_concurrent_streams
        self.max_outbound_frame_size = f.DEFAULT_MAX_FRAME_SIZE      # the client's SETTINGS_MAX_FRAME_SIZE
        self.send_window = DEFAULT_WINDOW                # the connection's, for what lb sends
        self.peer_initial_window = DEFAULT_WINDOW        # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_header_bytes = max_header_bytes
        self._window = ReceiveWindow(DEFAULT_WINDOW)     # the connection's, for what the client sends
        self._connection_window = connection_window
        self._reader = f.FrameReader(f.DEFAULT_MAX_FRAME_SIZE, max_block_bytes=max_header_bytes)
        self._decoder = Decoder(max_header_list_size=max_header_list_size)
        self._preface_left = PREFACE
        self._settings_due = True                        # the preface's SETTINGS frame has not come
        self._out: list[bytes] = []
        self.terminated = False                          # a GOAWAY that ends it is queued

    # -- the start, and bytes in ----------------------------------------------------------
    def initiate_connection(self) -> None:
        """Queue lb's SETTINGS (the server's preface) and open the connection's window."""
        self._out.append(f.settings_frame({Setting.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
                                           Setting.MAX_HEADER_LIST_SIZE: self.max_header_bytes}))
        if self._connection_window > DEFAULT_WINDOW:
            self._window.grow(self._connection_window - DEFAULT_WINDOW)
            self._out.append(f.window_update_frame(0, self._connection_window - DEFAULT_WINDOW))

    def feed(self, data: bytes) -> None:
        """What the socket read. Raises ProtocolError if the client's preface is not HTTP/2's."""
        if self.terminated:
            return
        if self._preface_left:
            data = self._preface(data)
        if data:
            self._reader.feed(data)

    def _preface(self, data: bytes) -> bytes:
        expected = self._preface_left
        if data[:len(expected)] != expected[:len(data)]:
            self._fail(ErrorCode.PROTOCOL_ERROR, "not the HTTP/2 connection preface")
        self._preface_left = expected[len(data):]
        return data[len(expected):]

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet handled as frames."""
        return self._reader.buffered

    def receive_frames(self, max_frames: int) -> tuple[list, bool]:
        """The events of the next `max_frames` frames at most, and whether it stopped at that
        bound (more may be left). Raises ProtocolError for a connection error (GOAWAY queued);
        the events of that slice are then dropped."""
        events: list = []
        if self.terminated:
            return events, False
        if self._settings_due:
            if not self._first_frame(events):
                return events, False
            max_frames -= 1
            if max_frames <= 0:
                return events, True
        reader = self._reader
        handlers = HANDLERS
        while True:
            try:
                for frame in reader:
                    handler = handlers.get(frame[0])
                    if handler is not None:
                        handler(self, frame, events)
                    max_frames -= 1
                    if max_frames <= 0:
                        return events, True
                return events, False
            except FrameError as exc:
                self._frame_error(exc, events)
                max_frames -= 1
                if max_frames <= 0:
                    return events, True

    def _first_frame(self, events: list) -> bool:
        """RFC 9113 3.4: the client's preface ends with a SETTINGS frame (h2 did not check).
        False while it has not come."""
        try:
            frame = self._reader.next_frame()
        except FrameError as exc:
            self._fail(exc.code if exc.connection_error else ErrorCode.PROTOCOL_ERROR, exc.message)
        if frame is None:
            return False
        if frame[0] != f.SETTINGS or frame[1] & f.ACK:
            self._fail(ErrorCode.PROTOCOL_ERROR, "the preface's SETTINGS frame did not come first")
        self._settings_due = False
        self._on_settings(frame, events)
        return True

    def _frame_error(self, exc: FrameError, events: list) -> None:
        if exc.connection_error:
            self._fail(exc.code, exc.message)
        if exc.frame is not None:               # HEADERS: its block must still be decoded
            self._on_headers(exc.frame, events, exc.code)
            return
        self._stream_error(exc.stream_id, exc.code, exc.message, events)

    # -- the handlers of each frame type (HANDLERS) -------------------------------------
    def _on_headers(self, frame: f.Frame, events: list, error: int = 0) -> None:
        """A request, trailers, or HEADERS too late; `error`: the frame layer's stream error,
        for which the stream is reset once the block is decoded."""
        _, flags, stream_id, block, _ = frame
        stream = self.streams.get(stream_id)
        if stream is None and stream_id > self.highest_inbound_stream_id \
                and len(self.streams) >= 2 * self.max_concurrent_streams:
            self._fail(ErrorCode.PROTOCOL_ERROR, f"HEADERS past twice {self.max_concurrent_streams} open streams")
        fields = self._decode(block)
        if stream is not None:
            if error:
                self._reset(stream, error, events)
            else:
                self._trailers(stream, flags, fields, events)
        elif stream_id > self.highest_inbound_stream_id:
            ended = bool(flags & f.END_STREAM)
            stream = self._new_stream(stream_id, ended)
            if error:
                self._reset(stream, error, events)
            else:
                events.append((REQUEST, stream_id, fields, ended))
        else:
            self._late_headers(stream_id)

    def _on_data(self, frame: f.Frame, events: list) -> None:
        _, flags, stream_id, data, length = frame
        if not self._window.consume(length):
            self._fail(ErrorCode.FLOW_CONTROL_ERROR, f"DATA of {length} bytes past the connection's window")
        stream = self.streams.get(stream_id)
        if stream is None or stream.state not in RECEIVES:
            self._late_data(stream, stream_id, length, events)
        elif not stream.received.consume(length):
            self._fail(ErrorCode.FLOW_CONTROL_ERROR, f"DATA of {length} bytes past stream {stream_id}'s window")
        else:
            ended = bool(flags & f.END_STREAM)
            events.append((DATA, stream_id, data, length, ended))
            if ended:
                self._end_received(stream)

    def _late_data(self, stream: Stream | None, stream_id: int, length: int, events: list) -> None:
        """DATA on a stream that is idle (a connection error), or half-closed (remote) or
        closed (a stream error STREAM_CLOSED, 5.1): its room in the connection's window is
        handed back at once, or the connection would stall."""
        if stream is None and self._idle(stream_id):
            self._fail(ErrorCode.PROTOCOL_ERROR, f"DATA on stream {stream_id}, which is idle")
        increment = self._window.acknowledge(length)
        if increment:
            self._out.append(f.window_update_frame(0, increment))
        if stream is not None:
            self._reset(stream, ErrorCode.STREAM_CLOSED, events)
        else:
            self._out.append(f.rst_stream_frame(stream_id, ErrorCode.STREAM_CLOSED))

    def _on_rst_stream(self, frame: f.Frame, events: list) -> None:
        stream_id, code = frame[2], frame[3]
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.move(RECV_RESET)
            self._forget(stream, True)
            events.append((RESET, stream_id, code, True))
        elif self._idle(stream_id):             # 6.4 (h2 ignored it)
            self._fail(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on stream {stream_id}, which is idle")

    def _on_window_update(self, frame: f.Frame, events: list) -> None:
        stream_id, increment = frame[2], frame[3]
        if not stream_id:
            if self.send_window + increment > f.MAX_WINDOW_SIZE:
                self._fail(ErrorCode.FLOW_CONTROL_ERROR, "WINDOW_UPDATE past 2^31-1 on the connection")
            self.send_window += increment
            events.append((WINDOW, 0, increment))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                self._fail(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {stream_id}, which is idle")
        elif stream.send_window + increment > f.MAX_WINDOW_SIZE:
            self._reset(stream, ErrorCode.FLOW_CONTROL_ERROR, events)
        else:
            stream.send_window += increment
            events.append((WINDOW, stream_id, increment))

    def _on_settings(self, frame: f.Frame, events: list) -> None:
        flags, settings = frame[1], frame[3]
        if flags & f.ACK:
            return                              # lb's settings hold from the start
        window = settings.get(Setting.INITIAL_WINDOW_SIZE)
        if window is not None:
            self._initial_window(window)
        table_size = settings.get(Setting.HEADER_TABLE_SIZE)
        if table_size is not None:              # lb's encoder signals it (h2head.ResponseEncoder)
            self.encoder.header_table_size = table_size
        frame_size = settings.get(Setting.MAX_FRAME_SIZE)
        if frame_size is not None:
            self.max_outbound_frame_size = frame_size
        self._out.append(f.SETTINGS_ACK_FRAME)
        events.append((SETTINGS, settings))

    def _initial_window(self, window: int) -> None:
        """SETTINGS_INITIAL_WINDOW_SIZE changes every open stream's send window (6.9.2)."""
        delta, self.peer_initial_window = window - self.peer_initial_window, window
        if delta:
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > f.MAX_WINDOW_SIZE:
                    self._fail(ErrorCode.FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {window} takes "
                               f"stream {stream.id}'s window past 2^31-1")

    def _on_ping(self, frame: f.Frame, events: list) -> None:
        if not frame[1] & f.ACK:                # lb sends no PING: an ACK is ignored
            self._out.append(f.ping_ack_frame(frame[3]))
            events.append((PING, frame[3]))

    def _on_goaway(self, frame: f.Frame, events: list) -> None:
        last_stream_id, code, debug = frame[3]
        events.append((GOAWAY, code, last_stream_id, debug))

    def _on_push_promise(self, frame: f.Frame, events: list) -> None:
        self._fail(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client (8.4)")

    def _ignore(self, frame: f.Frame, events: list) -> None:
        """PRIORITY (deprecated by RFC 9113 5.3.2; lb schedules streams as they come)."""

    def _decode(self, block: bytes) -> list:
        try:
            return self._decoder.decode(block)
        except HpackError as exc:
            self._fail(ErrorCode.COMPRESSION_ERROR, exc.message)
        except HeaderListTooLarge as exc:           # an HPACK bomb: a small block, a huge list
            self._fail(ErrorCode.ENHANCE_YOUR_CALM, exc.message)

    def _new_stream(self, stream_id: int, ended: bool) -> Stream:
        if not stream_id & 1:
            self._fail(ErrorCode.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}: a client's stream id is odd")
        self.highest_inbound_stream_id = stream_id
        stream = Stream(stream_id, HALF_CLOSED_REMOTE if ended else OPEN, self.peer_initial_window, DEFAULT_WINDOW)
        self.streams[stream_id] = stream
        return stream

    def _late_headers(self, stream_id: int) -> None:
        """HEADERS on a stream closed, forgotten, or skipped (5.1, 5.1.1)."""
        by_reset = self.closed_streams.by_reset(stream_id)
        if by_reset:                            # sent before the client saw the reset
            self._out.append(f.rst_stream_frame(stream_id, ErrorCode.STREAM_CLOSED))
        elif by_reset is None:
            self._fail(ErrorCode.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, at or below "
                       f"{self.highest_inbound_stream_id}, not open and not recently closed")
        else:
            self._fail(ErrorCode.STREAM_CLOSED, f"HEADERS on stream {stream_id}, closed by END_STREAM both ways")

    def _trailers(self, stream: Stream, flags: int, fields: list, events: list) -> None:
        if stream.state not in RECEIVES:        # half-closed (remote): the request was whole (5.1)
            self._reset(stream, ErrorCode.STREAM_CLOSED, events)
        elif not flags & f.END_STREAM:          # 8.1: malformed, a stream error (h2: a connection error)
            self._reset(stream, ErrorCode.PROTOCOL_ERROR, events)
        else:
            events.append((TRAILERS, stream.id, fields))
            self._end_received(stream)

    def _stream_error(self, stream_id: int, code: int, message: str, events: list) -> None:
        """A stream error from the frame layer (PRIORITY, a WINDOW_UPDATE of 0): on an idle
        stream, which may not be reset (5.1), a connection error; on a closed one, nothing."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._reset(stream, code, events)
        elif self._idle(stream_id):
            self._fail(code, message)

    def _idle(self, stream_id: int) -> bool:
        """Whether the client never opened this stream id nor any above it (5.1.1)."""
        return stream_id > self.highest_inbound_stream_id or not stream_id & 1

    # -- stream moves ------------------------------------------------------------------------
    def _end_received(self, stream: Stream) -> None:
        if stream.move(RECV_END) is HALF_CLOSED_REMOTE:
            return
        self._forget(stream, False)

    def _reset(self, stream: Stream, code: int, events: list) -> None:
        """A stream error on a stream lb has open: RST_STREAM, and a RESET event."""
        self._out.append(f.rst_stream_frame(stream.id, code))
        stream.move(SEND_RESET)
        self._forget(stream, True)
        events.append((RESET, stream.id, code, False))

    def _forget(self, stream: Stream, by_reset: bool) -> None:
        del self.streams[stream.id]
        self.closed_streams.add(stream.id, by_reset)

    def _fail(self, code: int, message: str) -> NoReturn:
        """A connection error: GOAWAY queued, ProtocolError raised."""
        self.close_connection(code)
        raise ProtocolError(message, code)

    # -- what lb sends ---------------------------------------------------------------------
    def _sendable(self, stream_id: int) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None or stream.state not in SENDS:
            raise StreamClosedError(stream_id)
        return stream

    def send_headers(self, stream_id: int, fields, end_stream: bool = False) -> None:
        """A response's header list. Raises StreamClosedError if the stream cannot carry it."""
        stream = self._sendable(stream_id)
        block = self.encoder.encode(fields)
        self._out.append(f.headers_frames(stream_id, block, end_stream, self.max_outbound_frame_size))
        if end_stream:
            self._end_sent(stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """One DATA frame. Raises StreamClosedError if the stream cannot carry it, ValueError
        past the windows or the client's max frame size (the caller keeps within them)."""
        stream = self._sendable(stream_id)
        size = len(data)
        if size and (size > self.send_window or size > stream.send_window or size > self.max_outbound_frame_size):
            raise ValueError(f"DATA of {size} bytes on stream {stream_id}: the windows are {self.send_window} and "
                             f"{stream.send_window}, the max frame size {self.max_outbound_frame_size}")
        self._out.append(f.data_frame(stream_id, data, end_stream))
        self.send_window -= size
        stream.send_window -= size
        if end_stream:
            self._end_sent(stream)

    def end_stream(self, stream_id: int) -> None:
        """END_STREAM on an empty DATA frame. Raises StreamClosedError as send_data."""
        self.send_data(stream_id, b"", True)

    def _end_sent(self, stream: Stream) -> None:
        if stream.move(SEND_END) is HALF_CLOSED_LOCAL:
            return
        self._forget(stream, False)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.NO_ERROR) -> None:
        """RST_STREAM on a stream lb has open; nothing on one already closed (h2 raised)."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._out.append(f.rst_stream_frame(stream_id, error_code))
            stream.move(SEND_RESET)
            self._forget(stream, True)

    def acknowledge_received_data(self, size: int, stream_id: int) -> None:
        """lb took `size` bytes of DATA (flow_length: padding counts): their room in the
        connection's window, and in the stream's while it is open, goes back to the client
        (in WINDOW_UPDATE increments by ReceiveWindow's rule)."""
        increment = self._window.acknowledge(size)
        if increment:
            self._out.append(f.window_update_frame(0, increment))
        stream = self.streams.get(stream_id)
        if stream is not None:
            increment = stream.received.acknowledge(size)
            if increment:
                self._out.append(f.window_update_frame(stream_id, increment))

    def local_flow_control_window(self, stream_id: int) -> int:
        """What lb may send on the stream now. Raises StreamClosedError if it is not open."""
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(stream_id)
        return min(self.send_window, stream.send_window)

    def send_goaway(self, last_stream_id: int, error_code: int = ErrorCode.NO_ERROR, debug: bytes = b"") -> None:
        """GOAWAY that lets the streams up to `last_stream_id` finish (lb is stopping); the
        caller refuses the client's streams above it."""
        self._out.append(f.goaway_frame(last_stream_id, error_code, debug))

    def close_connection(self, error_code: int = ErrorCode.NO_ERROR, additional_data: bytes | None = None) -> None:
        """GOAWAY that ends the connection: nothing more is read (the caller closes it)."""
        if not self.terminated:
            self.terminated = True
            self._out.append(f.goaway_frame(self.highest_inbound_stream_id, error_code, additional_data or b""))

    def data_to_send(self) -> bytes:
        """The bytes queued since the last call."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    @property
    def open_inbound_streams(self) -> int:
        return len(self.streams)


# Each frame type's handler; other types (CONTINUATION never comes alone: the reader assembles
# blocks) are ignored, as RFC 9113 5.5 asks of unknown ones.
HANDLERS = {
    f.DATA: ServerConnection._on_data, f.HEADERS: ServerConnection._on_headers,
    f.PRIORITY: ServerConnection._ignore, f.RST_STREAM: ServerConnection._on_rst_stream,
    f.SETTINGS: ServerConnection._on_settings, f.PUSH_PROMISE: ServerConnection._on_push_promise,
    f.PING: ServerConnection._on_ping, f.GOAWAY: ServerConnection._on_goaway,
    f.WINDOW_UPDATE: ServerConnection._on_window_update,
}
