"""The decisions of one proxied exchange: how a response is framed to the client,
whether a failed request may be tried again, and when a request body is late. No I/O;
lb/proxy/exchange.py, client.py and h2client.py act on them.
"""

from __future__ import annotations

# How a response body is framed towards the client
NO_BODY, RAW, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3

# Why a try failed
CONNECT_FAILED = "connect"          # no connection to the backend: nothing was sent
LOST_BEFORE_RESPONSE = "lost"       # the connection closed before any response byte

BODY_RATE_GRACE_S = 10.0            # before limits.min_body_rate applies


def response_framing(method: bytes, request_version: bytes, status: int,
                     content_length: int | None, keep_wanted: bool,
                     request_done: bool, closing: bool) -> tuple[int, bytes, bool]:
    """(body mode, framing header lines, keep the client connection) for a final response.

    HEAD, 204 and 304 have no body (a 304/HEAD keeps its Content-Length, RFC 9110
    8.6); a known length is sent as is; an unknown one is re-chunked for an
    HTTP/1.1 client and delimited by closing for HTTP/1.0. The client connection
    is kept only when it asked to be, its request was read whole, the body's end
    can be told without closing, and lb is not shutting down.
    """
    if method == b"HEAD" or status in (204, 304):
        mode = NO_BODY
        framing = b"" if status == 204 or content_length is None \
            else b"Content-Length: %d\r\n" % content_length
    elif content_length is not None:
        mode = RAW
        framing = b"Content-Length: %d\r\n" % content_length
    elif request_version == b"1.1":
        mode = CHUNKED
        framing = b"Transfer-Encoding: chunked\r\n"
    else:
        mode = UNTIL_CLOSE
        framing = b""
    keep = keep_wanted and request_done and mode != UNTIL_CLOSE and not closing
    if not keep:
        framing += b"Connection: close\r\n"
    elif request_version == b"1.0":
        framing += b"Connection: keep-alive\r\n"
    return mode, framing, keep


def may_retry(failure: str, tries: int, max_retries: int, idempotent: bool, body_held: bool,
              response_started: bool, client_open: bool) -> bool:
    """Whether a request whose try failed goes to another backend.

    A connect failure sent nothing, so any request may go again. A connection
    lost before any response byte may have reached the backend, so only an
    idempotent request whose body lb still holds (REPLAY_LIMIT_BYTES) goes again.
    Once a response byte reached the client, never. `tries` counts the tries made.
    """
    if response_started or not client_open or tries > max_retries:
        return False
    if failure == CONNECT_FAILED:
        return True
    return idempotent and body_held


def body_deadline(config, now: float, started: float, received: int) -> float:
    """When a request body being received (HTTP/1.1, or an HTTP/2 stream's) is late:
    timeouts.client_idle after its last progress, and never past what the bytes received so
    far earn at limits.min_body_rate after a grace (BODY_RATE_GRACE_S, at most client_idle)."""
    idle = config.timeouts.client_idle
    rate = config.limits.min_body_rate
    if not rate:
        return now + idle
    return min(now + idle, started + min(BODY_RATE_GRACE_S, idle) + received / rate)
