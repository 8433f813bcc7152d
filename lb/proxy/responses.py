"""The one place an HttpError becomes bytes on the wire."""

from __future__ import annotations

from ..core.errors import HttpError
from ..core.http1 import reason_phrase

# The statuses lb itself answers with; anything else it is handed is a bug: 500.
LB_STATUSES = frozenset({400, 405, 408, 413, 414, 431, 500, 502, 503, 504})


def error_response(exc: HttpError) -> bytes:
    """A short text response, then close. A client error says what was wrong with the
    request; a 5xx says only its status: which backend or address failed is for the
    operator (the access log's `error`), not for whoever is on the other end."""
    status = exc.status if exc.status in LB_STATUSES else 500
    reason = reason_phrase(status)
    body = b"%d %s\n" % (status, reason)
    if status < 500:
        body += exc.message.encode("utf-8", "replace")[:200] + b"\n"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, reason, len(body), body))
