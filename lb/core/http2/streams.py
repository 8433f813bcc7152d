"""HTTP/2 streams as the server side sees them (RFC 9113 5.1), the record of closed ones, and
the receive windows of flow control (6.9). No I/O.

Theory of operation
-------------------
A client opens a stream with HEADERS: idle -> open, or straight to half-closed (remote) when
the HEADERS ends the stream. The client's END_STREAM half-closes it from its side, lb's from
lb's (half-closed (local)); both, or a RST_STREAM either way, close it. `TRANSITIONS` is the
one table of (state, what happened) -> next state, and `Stream.move` the only code that
changes a state; a move not in the table raises StreamStateError naming the stream, its
state and the move (a bug in the connection, which checks `RECEIVES`/`SENDS` first).

What a state allows is two more rows: `RECEIVES`, the states in which the client may still
send DATA and trailers (else a stream error STREAM_CLOSED, 5.1 half-closed (remote)), and
`SENDS`, those in which lb may still send HEADERS and DATA.

A closed stream leaves the connection's table of streams; `ClosedStreams` remembers how each
of the last MAX_CLOSED_STREAMS ended, by a reset or by END_STREAM, because 5.1 answers a late
frame differently for each: a HEADERS on a stream reset a moment ago is a stream error (the
client sent it before it saw the RST_STREAM), on one that ended cleanly a connection error.
A stream no longer remembered is treated as one never opened (a connection error).

`ReceiveWindow` is one window of what the client may send (the connection's, or a stream's):
DATA consumes it, lb's acknowledgements (`acknowledge`) hand it back in WINDOW_UPDATE
increments by h2's rule (h2/windows.py), kept so that lb batches its WINDOW_UPDATEs as
before and the differential test against h2 compares them frame for frame.
"""

from __future__ import annotations

from collections import deque

from ..errors import LbError
from .frames import MAX_WINDOW_SIZE

# Stream states (RFC 9113 5.1); idle streams are not objects, and a closed one leaves the table.
OPEN = "open"
HALF_CLOSED_REMOTE = "half-closed (remote)"     # the client's END_STREAM came
HALF_CLOSED_LOCAL = "half-closed (local)"       # lb's END_STREAM went
CLOSED = "closed"

# What happens to a stream.
RECV_END = "END_STREAM received"
SEND_END = "END_STREAM sent"
RECV_RESET = "RST_STREAM received"
SEND_RESET = "RST_STREAM sent"

TRANSITIONS: dict[tuple[str, str], str] = {
    (OPEN, RECV_END): HALF_CLOSED_REMOTE,
    (OPEN, SEND_END): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_REMOTE, SEND_END): CLOSED,
    (HALF_CLOSED_LOCAL, RECV_END): CLOSED,
    **{(state, reset): CLOSED for state in (OPEN, HALF_CLOSED_REMOTE, HALF_CLOSED_LOCAL)
       for reset in (RECV_RESET, SEND_RESET)},
}
RECEIVES = frozenset({OPEN, HALF_CLOSED_LOCAL})      # the client may send DATA and trailers
SENDS = frozenset({OPEN, HALF_CLOSED_REMOTE})        # lb may send HEADERS and DATA

# How many closed streams are remembered (h2 keeps 65,536). A record costs ~100 B here; at
# h2's count, h2's ~176 B records grew a long-lived connection to 11 MiB, and bench/abuse.py
# h2_header_names (20 connections, ~2,000 streams each in 20 s) crept by ~7 MiB. A thousand
# streams closing while one of the client's frames is in flight is a flood, not a client.
MAX_CLOSED_STREAMS = 1000


class StreamStateError(LbError):
    """A move the stream table has no row for: a bug in the caller, never the peer's doing."""


class StreamClosedError(LbError):
    """lb asked to send on a stream that can no longer carry it (closed, reset, or ended by
    lb already). The caller drops what it had for the stream."""

    def __init__(self, stream_id: int):
        super().__init__(f"stream {stream_id} is closed for sending")
        self.stream_id = stream_id


class ReceiveWindow:
    """One flow-control window of what the peer may send (see the module's docstring)."""

    __slots__ = ("size", "max_size", "unacknowledged")

    def __init__(self, size: int):
        self.size = self.max_size = size
        self.unacknowledged = 0         # consumed, processed by lb, not yet handed back

    def consume(self, length: int) -> bool:
        """A DATA frame of `length` (padding included) came; False if it overran the window."""
        self.size -= length
        return self.size >= 0

    def grow(self, increment: int) -> None:
        """lb opens the window wider (its connection window at the start)."""
        if not 0 < self.size + increment <= MAX_WINDOW_SIZE:
            raise ValueError(f"a window of {self.size + increment}: expected 1..{MAX_WINDOW_SIZE}")
        self.size += increment
        self.max_size = max(self.size, self.max_size)

    def acknowledge(self, length: int) -> int:
        """lb processed `length` more bytes: the WINDOW_UPDATE increment to send now, or 0.
        Half the window's worth at once, or 1 KiB (a quarter of a small window) when it is
        shut, so a client sending small frames does not get a WINDOW_UPDATE for each."""
        self.unacknowledged += length
        pending = self.unacknowledged
        if not pending:
            return 0
        if pending >= self.max_size // 2 or not self.size and pending > min(1024, self.max_size // 4):
            increment = min(pending, self.max_size - self.size)
            self.unacknowledged = 0
            self.size += increment
            return increment
        return 0


class Stream:
    """A stream lb has open (not closed): its state and windows."""

    __slots__ = ("id", "state", "send_window", "received")

    def __init__(self, stream_id: int, state: str, send_window: int, receive_window: int):
        self.id = stream_id
        self.state = state
        self.send_window = send_window      # what lb may send: the peer's INITIAL_WINDOW_SIZE, then its updates
        self.received = ReceiveWindow(receive_window)

    def move(self, happened: str) -> str:
        """The state after `happened` (TRANSITIONS). Raises StreamStateError if it has no row."""
        state = TRANSITIONS.get((self.state, happened))
        if state is None:
            raise StreamStateError(f"stream {self.id} is {self.state}: no move on {happened}")
        self.state = state
        return state

    def __repr__(self) -> str:
        return f"Stream({self.id}, {self.state})"


class ClosedStreams:
    """How the last `limit` closed streams ended: stream id -> True if by a reset. Its own
    bounded record, not a Memo: a Memo starts over when full, and forgetting a thousand
    streams at once would make every late frame on them a connection error."""

    __slots__ = ("_ended", "_order", "limit")

    def __init__(self, limit: int = MAX_CLOSED_STREAMS):
        self._ended: dict[int, bool] = {}
        self._order: deque[int] = deque()
        self.limit = limit

    def add(self, stream_id: int, by_reset: bool) -> None:
        self._ended[stream_id] = by_reset
        self._order.append(stream_id)
        if len(self._order) > self.limit:
            del self._ended[self._order.popleft()]

    def by_reset(self, stream_id: int) -> bool | None:
        """True if the stream was reset, False if it ended with END_STREAM both ways, None if
        it is not remembered (forgotten, or never opened)."""
        return self._ended.get(stream_id)

    def __len__(self) -> int:
        return len(self._ended)

    def __contains__(self, stream_id: int) -> bool:
        return stream_id in self._ended
