"""exchange.py (core): how a response is framed to the client, and when a request goes again."""

import pytest

from lb.core.exchange import CHUNKED, CONNECT_FAILED, LOST_BEFORE_RESPONSE, NO_BODY, RAW, UNTIL_CLOSE, may_retry, response_framing

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
