"""The reference of lb's HTTP/2 connection (lb/core/http2/connection.py): the h2 library as
lb's front door used it until issue 29, kept for the differential test
(tests/unit/test_h2connection_core.py) and bench/h2_frames.py. `reference_connection` is
the configuration lb/proxy/h2client.py made, line for line; `LbH2Connection` and
`HeaderBoundFrameBuffer` are what lb/proxy/h2frames.py changed of h2: content-length is lb's
to judge (per stream, not a connection error), a connection remembers a bounded number of
closed streams, frames are handed out a bounded number at a time (`receive_frames`), and a
header block is held to limits.max_header_bytes as it comes."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidPaddingError
from hyperframe.frame import ContinuationFrame, HeadersFrame

from lb.core.h2head import ResponseEncoder


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


MAX_CONCURRENT_STREAMS = 100
CONNECTION_WINDOW = 16 << 20
HPACK_BOMB_FACTOR = 4


def reference_connection(max_header_bytes: int = 16384) -> "LbH2Connection":
    """An h2 server connection set up as lb/proxy/h2client.py set it up (its __init__ and
    connection_made), before initiate_connection's bytes are taken."""
    config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                       validate_inbound_headers=False, normalize_inbound_headers=False,
                                       validate_outbound_headers=False, normalize_outbound_headers=False)
    conn = LbH2Connection(config=config)
    conn.encoder = ResponseEncoder()
    conn.incoming_buffer = HeaderBoundFrameBuffer(max_header_bytes)
    conn.decoder.max_header_list_size = HPACK_BOMB_FACTOR * max_header_bytes
    conn.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_bytes,
        h2.settings.SettingCodes.ENABLE_PUSH: 0,
    })
    conn.initiate_connection()
    conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return conn
