"""h2's connection and frame buffer, as lb needs them changed: content-length is lb's to judge
(per stream, not a connection error), a connection remembers a bounded number of closed
streams, frames are handed out a bounded number at a time (`receive_frames`), and a header
block is held to limits.max_header_bytes as it comes. The connection handling is
lb/proxy/h2client.py's; the streams are lb/proxy/h2stream.py's."""

from __future__ import annotations

import h2.connection
import h2.exceptions
from h2.errors import ErrorCodes
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidPaddingError
from hyperframe.frame import ContinuationFrame, HeadersFrame


def _length_is_lbs(*args) -> None:
    return None


class LbH2Connection(h2.connection.H2Connection):
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


class HeaderBoundFrameBuffer(FrameBuffer):
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
