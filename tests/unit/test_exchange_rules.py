"""exchange.py (core): how a response is framed to the client, and when a request goes again."""

import pytest

from lb.core.exchange import (CHUNKED, CONNECT_FAILED, LOST_BEFORE_RESPONSE, NO_BODY, RAW, UNTIL_CLOSE, body_deadline,
                              may_retry, response_framing)

CL = b"Content-Length: 5\r\n"
TE = b"Transfer-Encoding: chunked\r\n"
CLOSE = b"Connection: close\r\n"
KEEP10 = b"Connection: keep-alive\r\n"

# method, client version, status, backend Content-Length, keep wanted, request read whole, lb closing
#   -> mode, framing lines, keep
FRAMING = [
    (b"GET", b"1.1", 200, 5, True, True, False, RAW, CL, True),
    (b"GET", b"1.1", 200, None, True, True, False, CHUNKED, TE, True),
    (b"GET", b"1.0", 200, None, True, True, False, UNTIL_CLOSE, CLOSE, False),   # 1.0: end by closing
    (b"GET", b"1.0", 200, 5, True, True, False, RAW, CL + KEEP10, True),         # 1.0 keep-alive said
    (b"HEAD", b"1.1", 200, 5, True, True, False, NO_BODY, CL, True),             # HEAD keeps its length
    (b"HEAD", b"1.1", 200, None, True, True, False, NO_BODY, b"", True),
    (b"GET", b"1.1", 204, 0, True, True, False, NO_BODY, b"", True),             # 204: no length at all
    (b"GET", b"1.1", 304, 5, True, True, False, NO_BODY, CL, True),
    (b"GET", b"1.1", 200, 5, False, True, False, RAW, CL + CLOSE, False),        # client said close
    (b"POST", b"1.1", 200, 5, True, False, False, RAW, CL + CLOSE, False),       # body not read whole
    (b"GET", b"1.1", 200, 5, True, True, True, RAW, CL + CLOSE, False),          # lb shutting down
    (b"GET", b"1.1", 200, 0, True, True, False, RAW, b"Content-Length: 0\r\n", True),
]


@pytest.mark.parametrize("method, version, status, length, wanted, done, closing, mode, framing, keep", FRAMING)
def test_response_framing(method, version, status, length, wanted, done, closing, mode, framing, keep):
    assert response_framing(method, version, status, length, wanted, done, closing) == (mode, framing, keep)


# failure, tries made, retries allowed, idempotent, body held, response started, client open -> retry
RETRIES = [
    (CONNECT_FAILED, 1, 2, False, False, False, True, True),         # nothing was sent: even a POST
    (CONNECT_FAILED, 3, 2, True, True, False, True, False),          # out of retries
    (CONNECT_FAILED, 1, 0, True, True, False, True, False),          # retries: 0
    (CONNECT_FAILED, 1, 2, True, True, False, False, False),         # the client left
    (LOST_BEFORE_RESPONSE, 1, 2, True, True, False, True, True),     # idempotent, body held
    (LOST_BEFORE_RESPONSE, 1, 2, False, True, False, True, False),   # a POST may have been applied
    (LOST_BEFORE_RESPONSE, 1, 2, True, False, False, True, False),   # body too big to replay
    (LOST_BEFORE_RESPONSE, 1, 2, True, True, True, True, False),     # a response byte went out
    (LOST_BEFORE_RESPONSE, 2, 2, True, True, False, True, True),     # the last retry
    (LOST_BEFORE_RESPONSE, 3, 2, True, True, False, True, False),
]


@pytest.mark.parametrize("failure, tries, retries, idempotent, held, started, client_open, expected", RETRIES)
def test_may_retry(failure, tries, retries, idempotent, held, started, client_open, expected):
    assert may_retry(failure, tries, retries, idempotent, held, started, client_open) is expected


class _Config:
    def __init__(self, idle: float, rate: float):
        self.timeouts = type("Timeouts", (), {"client_idle": idle})()
        self.limits = type("Limits", (), {"min_body_rate": rate})()


@pytest.mark.parametrize("idle, rate, now, started, received, deadline", [
    (60, 0, 100.0, 100.0, 0, 160.0),             # no minimum rate: client_idle after the last piece
    (60, 0, 130.0, 100.0, 5, 190.0),
    (60, 1024, 100.0, 100.0, 0, 110.0),          # a grace of 10 s, then the rate
    (60, 1024, 105.0, 100.0, 10240, 120.0),      # 10 KiB earn 10 s more
    (60, 1024, 105.0, 100.0, 1 << 30, 165.0),    # well ahead of the rate: client_idle bounds it
    (1, 1024, 100.0, 100.0, 0, 101.0),           # the grace is at most client_idle
    (1, 1024, 100.5, 100.0, 256, 101.25),        # a trickle: 256 B earn 0.25 s; idle would give 101.5
])
def test_a_request_body_is_late_after_client_idle_or_below_the_minimum_rate(idle, rate, now, started, received,
                                                                            deadline):
    assert body_deadline(_Config(idle, rate), now, started, received) == pytest.approx(deadline)
