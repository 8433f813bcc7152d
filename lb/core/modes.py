"""The modes of an HTTP/1.1 client connection and every move between them. No I/O.

Theory of operation
-------------------
A client connection (lb/proxy/client.py) is in exactly one `Mode`, and the mode
says what its next bytes are: the first ones (`NEW`: HTTP/2's preface may come
instead), a request head or body being read (`HEAD`, `BODY`), nothing expected
while the answers go out (`WAITING`) or between requests (`IDLE`), the bytes after
an Upgrade request, held until the backend switches or not (`HOLDING`), a tunnel's
(`TUNNEL`), nothing worth reading after a bad request that waits for its answer's
turn (`ERROR`), or bytes lb drops after its own half-close, for a while and up to
a budget (`LINGERING`, `CLOSING_WEBSOCKET`). `CLOSED` reads nothing more.

Each mode's row also names its clock: the timeout that runs while the connection
is in it. Entering a mode with another clock starts that clock
(`entry_deadline`); entering one with the same clock keeps the deadline, so a
request head's time counts from the connection's accept or from the head's first
byte, whichever came later, not from each piece. A mode with no clock has no
deadline of the client's: the exchange in flight and its backend have their own.

The connection moves only through `TRANSITIONS`, a table of (mode, event) -> mode,
and `next_mode()` is the only reader of it; an event missing from the table is a
bug and raises ModeError naming the mode and the event. Parser events can still
come after lb has given up on a connection (the rest of a read goes through the
parser after a request that failed at once): in `LINGERING` and `CLOSED` they
leave the mode as it is. What is not a mode stays a fact beside it: the client
half-closed after its requests (close once they are answered), a tunnel's half-closes.
"""

from __future__ import annotations

import enum
from operator import attrgetter

from .errors import LbError
from .exchange import body_deadline

INFINITY = float("inf")
LINGER_S = 2.0                      # a lingering close: how long lb reads and drops,
LINGER_MAX_BYTES = 1 << 20          # and how much (a flood is then reset, as before)
WEBSOCKET_CLOSE_WAIT_S = 2.0        # for the client's side of the closing handshake


class ModeError(LbError):
    """A move the table does not have: a bug in the connection's code, answered as one (500)."""


class Mode(enum.Enum):
    """A mode and its row: (name, clock, timeout, waiting_for_request). The timeout is a
    key path of the config, seconds, or None (no deadline)."""

    # Not a StrEnum: a str subclass's attributes read 2.5x slower (22 vs 9 ns; the connection
    # reads a few per request), and Enum's own hash is a Python function. A mode is one object.
    __hash__ = object.__hash__

    def __new__(cls, name: str, clock: str | None, timeout: str | float | None, waiting: bool = False):
        mode = object.__new__(cls)
        mode._value_ = name
        mode.clock = clock
        mode.timeout = timeout
        mode.waiting_for_request = waiting          # open, with no byte of a next request yet
        # the timeout as a function of the config; the body's clock is body_deadline's instead
        mode.seconds = (None if timeout is None or clock == "body" else attrgetter(timeout)
                        if isinstance(timeout, str) else (lambda config, s=timeout: s))
        return mode

    def __str__(self) -> str:
        return self._value_

    NEW = "new", "head", "timeouts.client_header", True
    HEAD = "head", "head", "timeouts.client_header"
    BODY = "body", "body", "timeouts.client_idle, limits.min_body_rate"
    WAITING = "waiting", None, None
    IDLE = "idle", "idle", "timeouts.client_idle", True
    HOLDING = "holding", None, None
    TUNNEL = "tunnel", "tunnel", "timeouts.tunnel"
    ERROR = "error", None, None
    LINGERING = "lingering", "linger", LINGER_S
    CLOSING_WEBSOCKET = "closing_websocket", "websocket_close", WEBSOCKET_CLOSE_WAIT_S
    CLOSED = "closed", None, None


NEW, HEAD, BODY, WAITING, IDLE, HOLDING, TUNNEL, ERROR, LINGERING, CLOSING_WEBSOCKET, CLOSED = Mode

# Events. The parser's: a request's first byte, its head (with or without a body to
# come), its end; bad bytes. The exchange's: the response ended with nothing queued
# (done), the backend switched protocols or not. The connection's own: its first bytes,
# the move to HTTP/2, lb's half-close after its answer, a WebSocket's closing
# handshake, lb's close, the transport lost.
FIRST_BYTES, HTTP2 = "first_bytes", "http2"
BEGIN, HEAD_ONLY, HEAD_WITH_BODY, END, BAD_REQUEST = "begin", "head", "head_with_body", "end", "bad_request"
UPGRADE, SWITCHED, REFUSED, DONE = "upgrade", "switched", "refused", "done"
LINGER, CLOSE_WEBSOCKET, CLOSE, LOST = "linger", "close_websocket", "close", "lost"
EVENTS = (FIRST_BYTES, HTTP2, BEGIN, HEAD_ONLY, HEAD_WITH_BODY, END, BAD_REQUEST, UPGRADE, SWITCHED,
          REFUSED, DONE, LINGER, CLOSE_WEBSOCKET, CLOSE, LOST)
PARSER_EVENTS = (BEGIN, HEAD_ONLY, HEAD_WITH_BODY, END, BAD_REQUEST, UPGRADE)
HTTP_MODES = (NEW, HEAD, BODY, WAITING, IDLE, HOLDING, ERROR)       # lb still speaks HTTP on them

TRANSITIONS: dict[tuple[Mode, str], Mode] = {
    (NEW, FIRST_BYTES): HEAD,                  # same clock: the head's time counts from the accept
    (NEW, HTTP2): CLOSED,                      # an H2ClientConnection has the transport now
    **{(mode, BEGIN): HEAD for mode in (HEAD, WAITING, IDLE)},
    (HEAD, HEAD_ONLY): WAITING,
    (HEAD, HEAD_WITH_BODY): BODY,
    (BODY, END): WAITING,
    (WAITING, END): WAITING,                   # a request with no body ends at its head
    (IDLE, END): IDLE,                         # ...and was answered at once (no backend: 503)
    (WAITING, UPGRADE): HOLDING,
    (HOLDING, REFUSED): WAITING,               # parsing goes on from where the request ended
    # 101 normally comes while the Upgrade request's exchange holds the connection; also
    # before the request's body ended, or with a request pipelined behind it being read.
    **{(mode, SWITCHED): TUNNEL for mode in (HOLDING, HEAD, BODY, WAITING, IDLE)},
    (WAITING, DONE): IDLE,
    # done with the next request already being read, or after the connection moved on: stays
    **{(mode, DONE): mode for mode in (HEAD, BODY, IDLE, TUNNEL, LINGERING, CLOSING_WEBSOCKET, CLOSED)},
    **{(mode, BAD_REQUEST): ERROR for mode in (HEAD, BODY, WAITING, IDLE, LINGERING)},
    (CLOSED, BAD_REQUEST): CLOSED,             # counted and logged; nothing can be sent
    **{(mode, LINGER): LINGERING for mode in HTTP_MODES},
    (TUNNEL, CLOSE_WEBSOCKET): CLOSING_WEBSOCKET,
    # what the rest of a read makes the parser say after lb gave up on the connection
    **{(mode, event): mode for mode in (LINGERING, CLOSED) for event in PARSER_EVENTS if event != BAD_REQUEST},
    **{(mode, CLOSE): CLOSED for mode in Mode if mode is not CLOSED},
    **{(mode, LOST): CLOSED for mode in Mode},
}


# The moves every keep-alive request makes, (mode, event, new mode): lb/proxy/client.py
# inlines them (through `_to` they cost 0.45 µs per request, +3.8% of bench/hotpath.py);
# tests/unit/test_modes.py holds the inlined code to this table.
KEEPALIVE_MOVES = ((IDLE, BEGIN, HEAD), (HEAD, HEAD_ONLY, WAITING), (WAITING, DONE, IDLE))
assert all(TRANSITIONS[mode, event] is new for mode, event, new in KEEPALIVE_MOVES)


for _mode in Mode:      # each mode's moves, for the connection's hot path: an index of the table
    _mode.moves = {event: new for (mode, event), new in TRANSITIONS.items() if mode is _mode}
del _mode


def next_mode(mode: Mode, event: str) -> Mode:
    """The mode after `event` in `mode`. Raises ModeError when the table has no such move."""
    new = TRANSITIONS.get((mode, event))
    if new is None:
        expected = sorted(str(m) for m, e in TRANSITIONS if e == event)
        raise ModeError(f"client connection: '{event}' expects a connection in "
                        f"{' or '.join(expected) or 'no mode'}; this one is {mode}")
    return new


def entry_deadline(mode: Mode, config, now: float) -> float:
    """When a connection entering `mode` at `now` times out, from the mode's row (inf: never)."""
    if mode is BODY:
        return body_deadline(config, now, now, 0)
    seconds = mode.seconds
    return INFINITY if seconds is None else now + seconds(config)
