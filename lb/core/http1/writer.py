"""HTTP/1.1 heads and chunks as bytes. No I/O.

Every head lb forwards is rebuilt here from parsed fields (lb/core/http1/heads.py), never
copied from the wire: the request upstream with lb's own forwarding lines, the response
to the client with the framing the caller chose, and the chunks of a chunked body.
"""

from __future__ import annotations

from http import HTTPStatus

from ..memo import Memo
from .framing import CACHED_MAX_BYTES
from .heads import RequestHead


def forwarded_element(client_ip: bytes, host: bytes | None, proto: bytes = b"http") -> bytes:
    """lb's hop as an RFC 7239 Forwarded element; an IPv6 address or a host:port is quoted.
    `proto` is the scheme the client used (https on a TLS listener)."""
    node = b'"[%s]"' % client_ip if b":" in client_ip else client_ip
    element = b"for=" + node
    if host:
        element += b';host="%s"' % host if b":" in host or b'"' in host else b";host=" + host
    return element + b";proto=" + proto


def serialize_request(head: RequestHead, client_ip: bytes, extra: list, trusted: bool = False,
                      forwarded: bytes | None = None, own: bytes | None = None, proto: bytes = b"http") -> bytes:
    """The head lb sends upstream: HTTP/1.1, end-to-end headers, lb's own headers. From a
    trusted proxy, the X-Forwarded-For and Forwarded chains it sent are kept and lb's hop
    appended; from anyone else they are lb's alone. `forwarded` is lb's Forwarded element
    when the caller has it ready (forwarded_element(client_ip, head.host)); `own` is the
    whole of lb's own lines when the caller has them ready (own_headers())."""
    # Forwarded as HTTP/1.1, which requires Host: an HTTP/1.0 request without one
    # gets an empty Host, as RFC 9112 3.2 prescribes for a target with no authority.
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\nHost: ", head.host or b"", b"\r\n"]
    for name, value in head.headers:
        parts += (name, b": ", value, b"\r\n")
    if head.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None:
        parts += (b"Content-Length: ", b"%d" % head.content_length, b"\r\n")
    if head.expect_continue:
        parts.append(b"Expect: 100-continue\r\n")
    if head.upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    parts.append(own if own is not None else own_headers(head, client_ip, trusted, forwarded, proto))
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def own_headers(head: RequestHead, client_ip: bytes, trusted: bool = False, forwarded: bytes | None = None,
                proto: bytes = b"http") -> bytes:
    """lb's own request header lines: X-Forwarded-For/-Proto/-Host, Forwarded, Via. They are
    the same for every request of a connection with the same Host and version unless the
    request brings a chain to extend (`chained`), so a connection makes them once."""
    xff, chain = head.forwarded_by if trusted and head.forwarded_by else (None, None)
    parts = [b"X-Forwarded-For: ", xff + b", " + client_ip if xff else client_ip, b"\r\nX-Forwarded-Proto: ",
             proto, b"\r\n"]
    if head.host is not None:
        parts += (b"X-Forwarded-Host: ", head.host, b"\r\n")
    element = forwarded or forwarded_element(client_ip, head.host, proto)
    parts += (b"Forwarded: ", chain + b", " + element if chain else element, b"\r\n")
    via = b"%s lb" % head.version
    parts += (b"Via: ", head.via + b", " + via if head.via else via, b"\r\n")
    return b"".join(parts)


def chained(head: RequestHead, trusted: bool) -> bool:
    """Whether lb's own lines for this request extend what it brought (Via, or a trusted
    proxy's X-Forwarded-For/Forwarded): then they are made for it alone."""
    return head.via is not None or (trusted and head.forwarded_by is not None)


_STATUS_LINES = Memo(256, 64 * 1024, 2 * CACHED_MAX_BYTES)    # (status, reason) -> its status line


def _status_line(status: int, reason: bytes) -> bytes:
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or reason_phrase(status))
        _STATUS_LINES.put((status, reason), line, len(reason) + len(line))
    return line


def serialize_response(status: int, reason: bytes, headers: list, framing: bytes) -> bytes:
    """A response head for the client; `framing` is the ready-made framing lines. The status
    line is made once per status and reason (a backend sends few)."""
    parts = [_status_line(status, reason)]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (framing, b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; nothing for no data, which as a chunk ("0") would end
    the body: an empty HTTP/2 DATA frame once did, and the rest of the body then framed the
    next request on the backend connection (found by tests/e2e/test_h2_framing.py)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
# The stdlib's phrases, with RFC 9110's newer names where Python 3.11 keeps the old ones.
STANDARD_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus} | {
    413: b"Content Too Large", 414: b"URI Too Long", 416: b"Range Not Satisfiable",
    422: b"Unprocessable Content"}


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of a status (RFC 9110), b"Unknown" for others."""
    return STANDARD_REASONS.get(status, b"Unknown")
