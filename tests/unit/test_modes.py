"""modes.py: the client connection's mode table, walked pair by pair, and each mode's clock."""

from operator import attrgetter

import pytest

from lb.core.config import parse_config
from lb.core.exchange import body_deadline
from lb.core.modes import (BODY, CLOSED, CLOSING_WEBSOCKET, ERROR, EVENTS, HEAD, HOLDING, IDLE, INFINITY, LINGER_S,
                           LINGERING, NEW, TRANSITIONS, TUNNEL, WAITING, WEBSOCKET_CLOSE_WAIT_S, Mode, ModeError,
                           entry_deadline, next_mode)

# Written out by hand, mode by mode: the moves each mode allows (every other event raises).
PARSER_AFTER_GIVING_UP = {"begin": "same", "head": "same", "head_with_body": "same", "end": "same", "upgrade": "same"}
ALLOWED = {
    NEW: {"first_bytes": HEAD, "http2": CLOSED, "linger": LINGERING},
    HEAD: {"begin": HEAD, "head": WAITING, "head_with_body": BODY, "bad_request": ERROR, "switched": TUNNEL,
           "done": HEAD, "linger": LINGERING},
    BODY: {"end": WAITING, "bad_request": ERROR, "switched": TUNNEL, "done": BODY, "linger": LINGERING},
    WAITING: {"begin": HEAD, "end": WAITING, "upgrade": HOLDING, "bad_request": ERROR, "switched": TUNNEL,
              "done": IDLE, "linger": LINGERING},
    IDLE: {"begin": HEAD, "end": IDLE, "bad_request": ERROR, "switched": TUNNEL, "done": IDLE, "linger": LINGERING},
    HOLDING: {"refused": WAITING, "switched": TUNNEL, "linger": LINGERING},
    TUNNEL: {"close_websocket": CLOSING_WEBSOCKET, "done": TUNNEL},
    ERROR: {"linger": LINGERING},
    LINGERING: {**PARSER_AFTER_GIVING_UP, "bad_request": ERROR, "done": LINGERING},
    CLOSING_WEBSOCKET: {"done": CLOSING_WEBSOCKET},
    CLOSED: {**PARSER_AFTER_GIVING_UP, "bad_request": CLOSED, "done": CLOSED},
}
EXPECTED = {}
for mode in Mode:
    allowed = ALLOWED[mode] | ({"close": CLOSED} if mode is not CLOSED else {}) | {"lost": CLOSED}
    for event in EVENTS:
        new = allowed.get(event)
        EXPECTED[mode, event] = mode if new == "same" else new


def test_the_expected_table_covers_every_pair_and_nothing_else():
    assert set(ALLOWED) == set(Mode)
    assert all(event in EVENTS for moves in ALLOWED.values() for event in moves)
    assert {pair: new for pair, new in EXPECTED.items() if new is not None} == TRANSITIONS
    assert {(mode, event): new for mode in Mode for event, new in mode.moves.items()} == TRANSITIONS


@pytest.mark.parametrize("mode, event", list(EXPECTED))
def test_every_pair(mode, event):
    expected = EXPECTED[mode, event]
    if expected is None:
        with pytest.raises(ModeError) as info:
            next_mode(mode, event)
        assert f"'{event}'" in info.value.message and f"this one is {mode}" in info.value.message
    else:
        assert next_mode(mode, event) is expected


CONFIG = parse_config("backends: [{name: w, address: 127.0.0.1:9001}]\n"
                      "timeouts: {client_header: 7s, client_idle: 50s, tunnel: 1h}\n")


@pytest.mark.parametrize("mode, deadline", [
    (NEW, 107.0), (HEAD, 107.0), (BODY, body_deadline(CONFIG, 100.0, 100.0, 0)), (WAITING, INFINITY),
    (IDLE, 150.0), (HOLDING, INFINITY), (TUNNEL, 3700.0), (ERROR, INFINITY), (LINGERING, 100.0 + LINGER_S),
    (CLOSING_WEBSOCKET, 100.0 + WEBSOCKET_CLOSE_WAIT_S), (CLOSED, INFINITY)])
def test_each_mode_s_deadline_comes_from_its_row(mode, deadline):
    assert entry_deadline(mode, CONFIG, 100.0) == deadline
    assert (mode.clock is None) == (deadline == INFINITY)


def test_a_row_s_timeout_names_the_config_key_it_reads():
    for mode in Mode:
        if isinstance(mode.timeout, str):
            for path in mode.timeout.split(", "):
                attrgetter(path)(CONFIG)         # resolves, or AttributeError


def test_the_head_clock_runs_on_from_the_accept_and_only_new_and_idle_wait_for_a_request():
    assert NEW.clock == HEAD.clock and next_mode(NEW, "first_bytes") is HEAD
    assert [mode for mode in Mode if mode.waiting_for_request] == [NEW, IDLE]
