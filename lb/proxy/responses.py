"""The one place an HttpError becomes bytes on the wire."""

from __future__ import annotations

from ..core.errors import HttpError
from ..core.http1 import reason_phrase

# The statuses lb itself answers with; anything else it is handed is a bug: 500.
LB_STATUSES = frozenset({400, 405, 408, 413, 414, 431, 500, 502, 503, 504})


def error_body(exc: HttpError) -> tuple[int, bytes]:
    """The status and short text of lb's answer. A client error says what was wrong with
    the request; a 5xx says only its status: which backend or address failed is for the
    operator (the access log's `error`), not for whoever is on the other end."""
    status = exc.status if exc.status in LB_STATUSES else 500
    body = b"%d %s\n" % (status, reason_phrase(status))
    if status < 500:
        body += exc.message.encode("utf-8", "replace")[:200] + b"\n"
    return status, body


def error_response(exc: HttpError, own_lines: bytes = b"") -> bytes:
    """lb's answer over HTTP/1.1, then close; `own_lines`: the listener's own header lines
    (Strict-Transport-Security)."""
    status, body = error_body(exc)
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n%s\r\n%s"
            % (status, reason_phrase(status), len(body), own_lines, body))


def error_fields(exc: HttpError, own_fields: tuple = ()) -> tuple[list, bytes]:
    """lb's answer over HTTP/2: the header list and the body; `own_fields` as `own_lines` above."""
    status, body = error_body(exc)
    return [(b":status", b"%d" % status), (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)), *own_fields], body
