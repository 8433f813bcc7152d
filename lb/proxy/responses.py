"""lb's own answers and header lines as bytes on the wire, each over HTTP/1.1 (lines) and
HTTP/2 (fields): the one place an HttpError becomes a response, and the pinning cookie
(lb/core/pinning.py decides it) becomes a Set-Cookie."""

from __future__ import annotations

from ..core.errors import HttpError
from ..core.http1 import reason_phrase
from ..core.memo import Memo
from ..core.pinning import PinCookie

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


# A pin's rendering once per version and connection kind (the line with the Set-Cookie
# value is made at a version's first use, not per request: bench/hotpath.py).
_pin_lines = Memo(256, 256 * 1024, 1024)        # PinCookie -> its HTTP/1.1 line
_pin_fields = Memo(256, 256 * 1024, 1024)       # PinCookie -> its HTTP/2 field


def pin_cookie_value(cookie: PinCookie) -> bytes:
    """The Set-Cookie value (RFC 6265) pinning a client: the same over HTTP/1.1 and HTTP/2."""
    return b"%s=%s; Path=/; HttpOnly; SameSite=Lax; Max-Age=%d%s" % (
        cookie.name, cookie.version, cookie.max_age_s, b"; Secure" if cookie.secure else b"")


def pin_cookie_line(cookie: PinCookie) -> bytes:
    """The pin as an HTTP/1.1 header line."""
    line = _pin_lines.get(cookie)
    if line is None:
        line = b"Set-Cookie: %s\r\n" % pin_cookie_value(cookie)
        _pin_lines.put(cookie, line, 2 * len(line))
    return line


def pin_cookie_field(cookie: PinCookie) -> tuple[bytes, bytes]:
    """The pin as an HTTP/2 field."""
    field = _pin_fields.get(cookie)
    if field is None:
        value = pin_cookie_value(cookie)
        field = (b"set-cookie", value)
        _pin_fields.put(cookie, field, 2 * len(value))
    return field
