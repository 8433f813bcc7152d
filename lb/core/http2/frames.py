"""HTTP/2 frames (RFC 9113 sections 4 and 6): bytes in, frames out, and the bytes of the frames
lb sends. No I/O.

Theory of operation
-------------------
A `FrameReader` is fed what the socket read (`feed`) and hands out one `Frame` at a time
(`next_frame`, or iterate): a frame split across reads waits for its last byte, several in
one read come out one by one. A frame is a tuple (`type, flags, stream_id, value, length`):
`value` is what the type carries, already checked (the table above `Frame`), and `length` the
payload's length on the wire, padding included, which is what flow control counts for DATA
(RFC 9113 6.1). Every rule of sections 4 and 6 that a frame alone decides is checked here:
the size against SETTINGS_MAX_FRAME_SIZE (refused from its header, before its payload is
held), the stream id each type needs, each type's payload length, padding, a stream that
depends on itself, a WINDOW_UPDATE of 0, each SETTINGS value's bounds (`SETTING_BOUNDS`).
Frames of an unknown type are length-checked and handed out as they came (value: the
payload) so the connection can count them against its flood budgets; it ignores them.

A refusal is a `FrameError` with its RFC 9113 section 7 code: `stream_id` 0 for a connection
error (the connection ends with GOAWAY), a stream id for a stream error (RST_STREAM on that
stream; the reader has consumed the frame and goes on). A stream error on a HEADERS frame
carries the frame: its header block must still go through HPACK (RFC 9113 4.3).

Given `max_block_bytes`, the reader also assembles header blocks (`HeaderBlockAssembler`):
a HEADERS or PUSH_PROMISE without END_HEADERS is held until its last CONTINUATION, and comes
out as one frame with END_HEADERS and the whole block; any other frame in between is a
PROTOCOL_ERROR, and a block past the bound (bytes or frames) is ENHANCE_YOUR_CALM (the
CONTINUATION flood, CVE-2024-27316). Without it, CONTINUATION frames come out as they are.

What this module does not know is left to the connection: stream states, flow-control
windows, which side may send what (a client's PUSH_PROMISE, ENABLE_PUSH=1 from a server),
the preface, and the order of SETTINGS and their ACKs.

The serializers (`headers_frames`, `data_frame`, ... `goaway_frame`) return the bytes of one
frame lb sends (a header block larger than the peer's max frame size is split into HEADERS
and CONTINUATION frames), each a `struct` pack and one concatenation or join; they trust
their caller on sizes a connection already knows (a DATA frame's length, a stream id).
"""

from __future__ import annotations

import enum
import struct
from typing import Callable

from ..errors import LbError

# Frame types (RFC 9113 section 6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
FRAME_NAMES = {DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
               SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
               WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION"}

# Flags. The PRIORITY flag of HEADERS is PRIORITY_FLAG: PRIORITY is the frame type.
END_STREAM = 0x1                # DATA, HEADERS
ACK = 0x1                       # SETTINGS, PING
END_HEADERS = 0x4               # HEADERS, PUSH_PROMISE, CONTINUATION
PADDED = 0x8                    # DATA, HEADERS, PUSH_PROMISE
PRIORITY_FLAG = 0x20            # HEADERS

FRAME_HEADER_BYTES = 9
DEFAULT_MAX_FRAME_SIZE = 1 << 14            # SETTINGS_MAX_FRAME_SIZE's initial value and its floor
MAX_MAX_FRAME_SIZE = (1 << 24) - 1          # ... and its ceiling (RFC 9113 6.5.2)
MAX_WINDOW_SIZE = (1 << 31) - 1             # a flow-control window's ceiling (RFC 9113 6.9.1)
STREAM_ID_MASK = (1 << 31) - 1              # a 31-bit field after a reserved bit, which is ignored
# h2's CONTINUATION_BACKLOG: a legitimate client splits a block at the max frame size, so
# lb's 16 KiB blocks take 2 frames; the bound stops a flood of empty CONTINUATION frames,
# which the byte bound alone would let run (~1 µs each, never handed out to be counted).
DEFAULT_MAX_BLOCK_FRAMES = 64


class ErrorCode(enum.IntEnum):
    """RFC 9113 section 7. A peer may send others: they are read as plain ints."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting(enum.IntEnum):
    """SETTINGS identifiers: RFC 9113 6.5.2, RFC 8441 (extended CONNECT), RFC 9218 (priorities)."""

    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6
    ENABLE_CONNECT_PROTOCOL = 0x8
    NO_RFC7540_PRIORITIES = 0x9


_P = ErrorCode.PROTOCOL_ERROR
_ANY = (0, (1 << 32) - 1, _P)
# Each known setting's (lowest, highest, the connection error past them); an identifier
# without a row is unknown, and ignored (RFC 9113 6.5.2).
SETTING_BOUNDS: dict[int, tuple[int, int, ErrorCode]] = {
    Setting.HEADER_TABLE_SIZE: _ANY,
    Setting.ENABLE_PUSH: (0, 1, _P),
    Setting.MAX_CONCURRENT_STREAMS: _ANY,
    Setting.INITIAL_WINDOW_SIZE: (0, MAX_WINDOW_SIZE, ErrorCode.FLOW_CONTROL_ERROR),
    Setting.MAX_FRAME_SIZE: (DEFAULT_MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE, _P),
    Setting.MAX_HEADER_LIST_SIZE: _ANY,
    Setting.ENABLE_CONNECT_PROTOCOL: (0, 1, _P),
    Setting.NO_RFC7540_PRIORITIES: (0, 1, _P),
}


# A frame as read is a plain tuple, (type, flags, stream_id, value, length), unpacked by
# position: 0.93 against 1.10 µs a frame read for a NamedTuple (tuple.__new__, 134 against 29
# ns to build) in bench/h2_frames_core.py's mixed stream. `flags` are the wire's (an
# assembled block's frame has END_HEADERS added); `length` is the payload's length on the
# wire, padding included (for DATA: what flow control counts). `value` by type:
#   DATA: the data, padding removed        HEADERS, CONTINUATION: the header block fragment
#   PRIORITY: (depends_on, weight, exclusive), the weight as on the wire (0-255)
#   RST_STREAM: the error code (an int)    SETTINGS: {identifier: value} of the known ones
#   PUSH_PROMISE: (promised_stream_id, fragment)         PING: the 8 opaque bytes
#   GOAWAY: (last_stream_id, error code, debug data)     WINDOW_UPDATE: the increment
#   any other type: the payload as it came
Frame = tuple


class FrameError(LbError):
    """A frame refused: `code` (ErrorCode), `stream_id` 0 for a connection error or the stream
    to reset for a stream error, and for a stream error on HEADERS the `frame` (or assembled
    block) whose fragment must still be decoded to keep HPACK in step."""

    def __init__(self, message: str, code: ErrorCode, stream_id: int = 0, frame: Frame | None = None):
        super().__init__(message)
        self.code = code
        self.stream_id = stream_id
        self.frame = frame

    @property
    def connection_error(self) -> bool:
        return not self.stream_id

    def __repr__(self) -> str:
        return f"FrameError({self.message!r}, {self.code!r}, stream_id={self.stream_id})"


_HEAD = struct.Struct(">IBI")           # Length (24 bits) and Type (8) as one word, Flags, R + Stream Identifier
_pack_head = _HEAD.pack
_unpack_head = _HEAD.unpack_from
_WORD = struct.Struct(">I")
_unpack_word = _WORD.unpack_from
_PRIORITY = struct.Struct(">IB")        # E + Stream Dependency, Weight
_SETTING = struct.Struct(">HI")
_TWO_WORDS = struct.Struct(">II")       # GOAWAY's Last-Stream-ID and Error Code


def _connection(message: str, code: ErrorCode = _P) -> FrameError:
    return FrameError(message, code)


def _size(message: str) -> FrameError:
    return FrameError(message, ErrorCode.FRAME_SIZE_ERROR)


def _on_stream_zero(ftype: int) -> FrameError:
    return _connection(f"{FRAME_NAMES[ftype]} on stream 0: expected a stream id")


def _off_stream_zero(ftype: int, stream_id: int) -> FrameError:
    return _connection(f"{FRAME_NAMES[ftype]} on stream {stream_id}: expected stream 0")


def _fields(ftype: int, flags: int, payload: bytes, fixed: int) -> tuple[int, int]:
    """Where the fragment or data starts and ends once the Pad Length field, `fixed` bytes of
    fields and the padding are set apart. Raises FrameError: FRAME_SIZE_ERROR if the payload
    cannot hold the fields, PROTOCOL_ERROR if the padding runs into them (RFC 9113 6.1, 6.2, 6.6)."""
    start, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise _size(f"{FRAME_NAMES[ftype]} with PADDED and no Pad Length field")
        start, end = 1, end - payload[0]
    if len(payload) < start + fixed:
        raise _size(f"{FRAME_NAMES[ftype]} payload of {len(payload)} bytes: expected {start + fixed} or more")
    if end < start + fixed:
        raise _connection(f"{FRAME_NAMES[ftype]} padding of {payload[0]} bytes in a payload of {len(payload)}")
    return start + fixed, end


def _data(flags: int, stream_id: int, payload: bytes) -> Frame:
    if not stream_id:
        raise _on_stream_zero(DATA)
    length = len(payload)
    if flags & PADDED:
        start, end = _fields(DATA, flags, payload, 0)
        payload = payload[start:end]
    return (DATA, flags, stream_id, payload, length)


def _headers(flags: int, stream_id: int, payload: bytes) -> Frame:
    if not stream_id:
        raise _on_stream_zero(HEADERS)
    if not flags & (PADDED | PRIORITY_FLAG):
        return (HEADERS, flags, stream_id, payload, len(payload))
    start, end = _fields(HEADERS, flags, payload, 5 if flags & PRIORITY_FLAG else 0)
    frame = (HEADERS, flags, stream_id, payload[start:end], len(payload))
    if flags & PRIORITY_FLAG and _unpack_word(payload, start - 5)[0] & STREAM_ID_MASK == stream_id:
        raise FrameError(f"HEADERS on stream {stream_id} depends on itself", _P, stream_id, frame)
    return frame


def _priority(flags: int, stream_id: int, payload: bytes) -> Frame:
    if not stream_id:
        raise _on_stream_zero(PRIORITY)
    if len(payload) != 5:     # a stream error: the frame changes nothing else (RFC 9113 6.3)
        raise FrameError(f"PRIORITY payload of {len(payload)} bytes: expected 5", ErrorCode.FRAME_SIZE_ERROR,
                         stream_id)
    dependency, weight = _PRIORITY.unpack(payload)
    depends_on = dependency & STREAM_ID_MASK
    if depends_on == stream_id:
        raise FrameError(f"PRIORITY on stream {stream_id} depends on itself", _P, stream_id)
    return (PRIORITY, flags, stream_id, (depends_on, weight, dependency > STREAM_ID_MASK), 5)


def _rst_stream(flags: int, stream_id: int, payload: bytes) -> Frame:
    if not stream_id:
        raise _on_stream_zero(RST_STREAM)
    if len(payload) != 4:
        raise _size(f"RST_STREAM payload of {len(payload)} bytes: expected 4")
    return (RST_STREAM, flags, stream_id, _unpack_word(payload)[0], 4)


def _settings(flags: int, stream_id: int, payload: bytes) -> Frame:
    if stream_id:
        raise _off_stream_zero(SETTINGS, stream_id)
    if flags & ACK and payload:
        raise _size(f"SETTINGS with ACK and a payload of {len(payload)} bytes: expected none")
    if len(payload) % 6:
        raise _size(f"SETTINGS payload of {len(payload)} bytes: expected a multiple of 6")
    settings = {}
    for identifier, value in _SETTING.iter_unpack(payload):
        bounds = SETTING_BOUNDS.get(identifier)
        if bounds is not None:
            if not bounds[0] <= value <= bounds[1]:
                raise _connection(f"{Setting(identifier).name} {value}: expected {bounds[0]}..{bounds[1]}", bounds[2])
            settings[identifier] = value
    return (SETTINGS, flags, 0, settings, len(payload))


def _push_promise(flags: int, stream_id: int, payload: bytes) -> Frame:
    if not stream_id:
        raise _on_stream_zero(PUSH_PROMISE)
    start, end = _fields(PUSH_PROMISE, flags, payload, 4)
    promised = _unpack_word(payload, start - 4)[0] & STREAM_ID_MASK
    if not promised or promised & 1:     # a server's stream: even (RFC 9113 5.1.1)
        raise _connection(f"PUSH_PROMISE promising stream {promised}: expected an even stream id")
    return (PUSH_PROMISE, flags, stream_id, (promised, payload[start:end]), len(payload))


def _ping(flags: int, stream_id: int, payload: bytes) -> Frame:
    if stream_id:
        raise _off_stream_zero(PING, stream_id)
    if len(payload) != 8:
        raise _size(f"PING payload of {len(payload)} bytes: expected 8")
    return (PING, flags, 0, payload, 8)


def _goaway(flags: int, stream_id: int, payload: bytes) -> Frame:
    if stream_id:
        raise _off_stream_zero(GOAWAY, stream_id)
    if len(payload) < 8:
        raise _size(f"GOAWAY payload of {len(payload)} bytes: expected 8 or more")
    last_stream_id, code = _TWO_WORDS.unpack_from(payload)
    return (GOAWAY, flags, 0, (last_stream_id & STREAM_ID_MASK, code, payload[8:]), len(payload))


def _window_update(flags: int, stream_id: int, payload: bytes) -> Frame:
    if len(payload) != 4:
        raise _size(f"WINDOW_UPDATE payload of {len(payload)} bytes: expected 4")
    increment = _unpack_word(payload)[0] & STREAM_ID_MASK
    if not increment:       # on a stream, a stream error; on the connection's window, a connection one (6.9)
        raise FrameError(f"WINDOW_UPDATE of 0 on stream {stream_id}: expected 1..{MAX_WINDOW_SIZE}", _P, stream_id)
    return (WINDOW_UPDATE, flags, stream_id, increment, 4)


def _continuation(flags: int, stream_id: int, payload: bytes) -> Frame:
    if not stream_id:
        raise _on_stream_zero(CONTINUATION)
    return (CONTINUATION, flags, stream_id, payload, len(payload))


# Each frame type's reader: (flags, stream_id, payload) -> Frame, or FrameError.
PARSERS: dict[int, Callable[[int, int, bytes], Frame]] = {
    DATA: _data, HEADERS: _headers, PRIORITY: _priority, RST_STREAM: _rst_stream, SETTINGS: _settings,
    PUSH_PROMISE: _push_promise, PING: _ping, GOAWAY: _goaway, WINDOW_UPDATE: _window_update,
    CONTINUATION: _continuation,
}
_BLOCK_STARTS = (HEADERS, PUSH_PROMISE)
# What the reader calls directly when it assembles header blocks and none is open.
_BLOCK_FREE_PARSERS = {ftype: parse for ftype, parse in PARSERS.items() if ftype not in (*_BLOCK_STARTS, CONTINUATION)}


class HeaderBlockAssembler:
    """One header block at a time (RFC 9113 4.3, 6.10): a HEADERS or PUSH_PROMISE frame, then
    CONTINUATION frames on its stream and nothing else until END_HEADERS, held to
    `max_block_bytes` of fragments and `max_block_frames` frames."""

    __slots__ = ("max_block_bytes", "max_block_frames", "stream_id", "_first", "_fragments", "_bytes", "_length",
                 "_error")

    def __init__(self, max_block_bytes: int, max_block_frames: int = DEFAULT_MAX_BLOCK_FRAMES):
        self.max_block_bytes = max_block_bytes
        self.max_block_frames = max_block_frames
        self.stream_id = 0                  # the stream whose block is open, 0 when none is
        self._first: Frame | None = None
        self._fragments: list[bytes] = []
        self._bytes = self._length = 0
        self._error: FrameError | None = None

    def start(self, parse: Callable, flags: int, stream_id: int, payload: bytes) -> Frame | None:
        """The HEADERS or PUSH_PROMISE frame `parse` reads; None while its block goes on.
        Raises FrameError: the frame's own, ENHANCE_YOUR_CALM past the bound; a stream error
        on HEADERS once its block is whole, carrying it."""
        try:
            frame, error = parse(flags, stream_id, payload), None
        except FrameError as exc:
            if exc.frame is None:
                raise
            frame, error = exc.frame, exc
        ftype, _, _, value, length = frame
        fragment = value if ftype == HEADERS else value[1]
        self._check(len(fragment), 1)
        if flags & END_HEADERS:
            if error is not None:
                raise error
            return frame
        self._first, self._fragments, self._error = frame, [fragment], error
        self.stream_id = stream_id
        self._bytes, self._length = len(fragment), length
        return None

    def add(self, ftype: int, flags: int, stream_id: int, payload: bytes) -> Frame | None:
        """A frame read while a block is open (or a CONTINUATION when none is): the whole
        block as one frame at END_HEADERS, else None. Raises FrameError: PROTOCOL_ERROR for
        any other frame, ENHANCE_YOUR_CALM past the bound; a stream error the block began with."""
        if not self.stream_id or ftype != CONTINUATION or stream_id != self.stream_id:
            raise _connection(self._unexpected(ftype, stream_id))
        self._check(self._bytes + len(payload), len(self._fragments) + 1)
        self._fragments.append(payload)
        self._bytes += len(payload)
        self._length += len(payload)
        return self._finish() if flags & END_HEADERS else None

    def _check(self, block_bytes: int, frames: int) -> None:
        if block_bytes > self.max_block_bytes or frames > self.max_block_frames:
            raise _connection(f"header block over {self.max_block_bytes} bytes or {self.max_block_frames} frames",
                              ErrorCode.ENHANCE_YOUR_CALM)

    def _unexpected(self, ftype: int, stream_id: int) -> str:
        name = FRAME_NAMES.get(ftype, f"frame type {ftype:#x}")
        if not self.stream_id:
            return f"{name} on stream {stream_id} with no header block open"
        return f"{name} on stream {stream_id} inside the header block of stream {self.stream_id}"

    def _finish(self) -> Frame:
        (ftype, flags, stream_id, value, _), error = self._first, self._error
        block = b"".join(self._fragments)
        frame = (ftype, flags | END_HEADERS, stream_id, block if ftype == HEADERS else (value[0], block), self._length)
        self._first, self._fragments, self._error = None, [], None
        self.stream_id = 0
        if error is not None:
            raise FrameError(error.message, error.code, error.stream_id, frame)
        return frame


class FrameReader:
    """Frames out of the bytes fed in. `max_frame_size` is the SETTINGS_MAX_FRAME_SIZE lb
    advertised (raise it once the peer acknowledged it); `max_block_bytes`, if given, turns
    on header block assembly (HeaderBlockAssembler) with that bound. After a connection
    error the reader is done: the connection ends."""

    __slots__ = ("_buffer", "_pos", "_parts", "_parts_bytes", "_wanted", "_max_frame_size", "_block", "_direct")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, max_block_bytes: int | None = None,
                 max_block_frames: int = DEFAULT_MAX_BLOCK_FRAMES):
        self._buffer = b""
        self._pos = 0
        # Reads that cannot complete the next frame are kept apart and joined once they can:
        # a large frame trickled in small reads is then copied once, not once a read.
        self._parts: list[bytes] = []
        self._parts_bytes = 0
        self._wanted = FRAME_HEADER_BYTES        # bytes from _pos the next frame needs, as last seen
        self.max_frame_size = max_frame_size
        self._block = None if max_block_bytes is None else HeaderBlockAssembler(max_block_bytes, max_block_frames)
        self._direct = PARSERS if self._block is None else _BLOCK_FREE_PARSERS

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, size: int) -> None:
        if not DEFAULT_MAX_FRAME_SIZE <= size <= MAX_MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size {size}: expected {DEFAULT_MAX_FRAME_SIZE}..{MAX_MAX_FRAME_SIZE}")
        self._max_frame_size = size

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet handed out as frames."""
        return len(self._buffer) - self._pos + self._parts_bytes

    @property
    def in_header_block(self) -> bool:
        return self._block is not None and self._block.stream_id != 0

    def feed(self, data: bytes) -> None:
        """Add what the socket read; the frames come out of next_frame or iteration."""
        if type(data) is not bytes:
            data = bytes(data)
        if not self._parts and self._pos == len(self._buffer):
            self._buffer, self._pos = data, 0
            return
        self._parts.append(data)
        self._parts_bytes += len(data)
        if len(self._buffer) - self._pos + self._parts_bytes >= self._wanted:
            self._join()

    def _join(self) -> None:
        self._buffer = b"".join([self._buffer[self._pos:], *self._parts])
        self._pos = 0
        self._parts.clear()
        self._parts_bytes = 0

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more is fed. Raises FrameError (see the module)."""
        try:
            return self.__next__()
        except StopIteration:
            return None

    def __iter__(self) -> FrameReader:
        return self

    def __next__(self) -> Frame:
        # The hot path: one call to the type's reader, unless a header block is concerned.
        while True:
            buffer, pos = self._buffer, self._pos
            if len(buffer) - pos < FRAME_HEADER_BYTES:
                if self._more(FRAME_HEADER_BYTES):
                    continue
                raise StopIteration
            word, flags, stream_id = _unpack_head(buffer, pos)
            if word >> 8 > self._max_frame_size:
                raise _size(f"frame of {word >> 8} bytes: expected {self._max_frame_size} or fewer")
            stop = pos + FRAME_HEADER_BYTES + (word >> 8)
            if stop > len(buffer):
                if self._more(stop - pos):
                    continue
                raise StopIteration
            self._pos = stop
            parse = self._direct.get(word & 0xFF)
            block = self._block
            if parse is not None and (block is None or not block.stream_id):
                return parse(flags, stream_id & STREAM_ID_MASK, buffer[pos + FRAME_HEADER_BYTES:stop])
            frame = self._read(word & 0xFF, flags, stream_id & STREAM_ID_MASK, buffer[pos + FRAME_HEADER_BYTES:stop])
            if frame is not None:
                return frame

    def _more(self, wanted: int) -> bool:
        """Whether the reads kept apart complete what the next frame needs (then joined)."""
        if self._parts and len(self._buffer) - self._pos + self._parts_bytes >= wanted:
            self._join()
            return True
        self._wanted = wanted
        return False

    def _read(self, ftype: int, flags: int, stream_id: int, payload: bytes) -> Frame | None:
        """A frame of an unknown type, or one the header block rule concerns."""
        block = self._block
        if block is not None:
            if block.stream_id or ftype == CONTINUATION:
                return block.add(ftype, flags, stream_id, payload)
            if ftype in _BLOCK_STARTS:
                return block.start(PARSERS[ftype], flags, stream_id, payload)
        return (ftype, flags, stream_id, payload, len(payload))


# Serializers: the bytes of the frames lb sends.

def frame_bytes(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """Any frame, as given: nothing is checked (the tests build invalid ones with it)."""
    return _pack_head(len(payload) << 8 | ftype, flags, stream_id) + payload


def headers_frames(stream_id: int, block: bytes, end_stream: bool = False,
                   max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """A header block as HEADERS with END_HEADERS, or split into HEADERS and CONTINUATION
    frames of at most the peer's `max_frame_size`; END_STREAM on the HEADERS if asked."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame_size:
        return _pack_head(len(block) << 8 | HEADERS, flags | END_HEADERS, stream_id) + block
    parts = [_pack_head(max_frame_size << 8 | HEADERS, flags, stream_id), block[:max_frame_size]]
    for start in range(max_frame_size, len(block), max_frame_size):
        chunk = block[start:start + max_frame_size]
        last = start + max_frame_size >= len(block)
        parts += (_pack_head(len(chunk) << 8 | CONTINUATION, END_HEADERS if last else 0, stream_id), chunk)
    return b"".join(parts)


def data_frame(stream_id: int, data: bytes, end_stream: bool = False) -> bytes:
    """One DATA frame; the caller keeps it within the peer's max frame size and windows."""
    return _pack_head(len(data) << 8, END_STREAM if end_stream else 0, stream_id) + data


def data_frames(stream_id: int, data: bytes, end_stream: bool = False,
                max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """`data` as DATA frames of at most `max_frame_size`, END_STREAM on the last if asked."""
    if len(data) <= max_frame_size:
        return data_frame(stream_id, data, end_stream)
    parts = []
    for start in range(0, len(data), max_frame_size):
        chunk = data[start:start + max_frame_size]
        last = end_stream and start + max_frame_size >= len(data)
        parts += (_pack_head(len(chunk) << 8, END_STREAM if last else 0, stream_id), chunk)
    return b"".join(parts)


def settings_frame(settings: dict[int, int]) -> bytes:
    """SETTINGS with these identifiers and values, in the dict's order."""
    payload = b"".join([_SETTING.pack(identifier, value) for identifier, value in settings.items()])
    return _pack_head(len(payload) << 8 | SETTINGS, 0, 0) + payload


SETTINGS_ACK_FRAME = _pack_head(SETTINGS, ACK, 0)


def settings_ack_frame() -> bytes:
    return SETTINGS_ACK_FRAME


def ping_frame(opaque: bytes, ack: bool = False) -> bytes:
    """A PING, or its ACK echoing the peer's 8 bytes. Raises ValueError unless 8 bytes."""
    if len(opaque) != 8:
        raise ValueError(f"PING data of {len(opaque)} bytes: expected 8")
    return _pack_head(8 << 8 | PING, ACK if ack else 0, 0) + opaque


def ping_ack_frame(opaque: bytes) -> bytes:
    return ping_frame(opaque, ack=True)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    """WINDOW_UPDATE (stream 0: the connection's window). Raises ValueError unless 1..2^31-1."""
    if not 1 <= increment <= MAX_WINDOW_SIZE:
        raise ValueError(f"window increment {increment}: expected 1..{MAX_WINDOW_SIZE}")
    return _pack_head(4 << 8 | WINDOW_UPDATE, 0, stream_id) + _WORD.pack(increment)


def rst_stream_frame(stream_id: int, code: int) -> bytes:
    return _pack_head(4 << 8 | RST_STREAM, 0, stream_id) + _WORD.pack(code)


def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """GOAWAY: the last stream lb will answer, the error code, and optional debug data."""
    return b"".join([_pack_head((8 + len(debug)) << 8 | GOAWAY, 0, 0), _TWO_WORDS.pack(last_stream_id, code), debug])
