"""HTTP/1.1 request and response heads: the types the parsers produce, and the one analysis
both parser adapters hand their raw (name, value) pairs to. No I/O.

`analyze_request` / `analyze_response` hold every framing and smuggling rule in one place
(the framing itself is lb/core/http1/framing.py): conflicting Content-Length,
Transfer-Encoding other than a single final `chunked`, TE together with CL, a missing or
doubled Host, a Host that is no host[:port]. They strip the hop-by-hop headers and the
ones lb sets itself, so a head's `headers` are end-to-end only. The `check_*` functions are
the size and grammar limits both adapters (and HTTP/2's heads) are held to.
"""

from __future__ import annotations

import re

from ..errors import HttpError
from ..memo import Memo
from .framing import CACHED_MAX_BYTES, CONNECTION_OPTIONS, body_framing, connection_tokens, drop_named

# RFC 9110 7.6.1 hop-by-hop fields, plus the legacy Proxy-Connection.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})
# Request headers lb sets itself; a client's copy is dropped, never trusted.
REQUEST_OWNED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
                           b"x-real-ip", b"x-forwarded-port", b"x-forwarded-prefix"})
# A Host: a reg-name or IPv4 (RFC 3986 characters) or a bracketed IPv6, and a port.
_HOST_VALUE_RE = re.compile(rb"^(?:(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?$")
_ABSOLUTE_RE = re.compile(rb"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
# The methods llhttp knows (it refuses any other token); h11 accepts any token, so the
# shared analysis holds both to this list.
METHODS = frozenset(m.encode() for m in (
    "DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK "
    "BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE "
    "PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY").split())
REPLAY_LIMIT_BYTES = 64 * 1024


class RequestHead:
    """A parsed, validated request head. `headers` are end-to-end only."""

    __slots__ = ("method", "target", "version", "headers", "host", "content_length",
                 "chunked", "keep_alive", "upgrade", "expect_continue", "via", "forwarded_by")

    def __init__(self, method, target, version, headers, host, content_length,
                 chunked, keep_alive, upgrade, expect_continue, via, forwarded_by=None):
        self.method: bytes = method
        self.target: bytes = target
        self.version: bytes = version          # b"1.1" or b"1.0"
        self.headers: list = headers           # [(name, value)] without hop-by-hop
        self.host: bytes | None = host
        self.content_length: int | None = content_length
        self.chunked: bool = chunked
        self.keep_alive: bool = keep_alive     # the client wants the connection kept
        self.upgrade: bytes | None = upgrade   # the protocol asked for, e.g. b"websocket"
        self.expect_continue: bool = expect_continue
        self.via: bytes | None = via
        # (X-Forwarded-For, Forwarded) as the client sent them, or None: kept only when the
        # peer is a trusted proxy (trusted_proxies), dropped otherwise
        self.forwarded_by: tuple[bytes | None, bytes | None] | None = forwarded_by

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT_METHODS


class ResponseHead:
    """A parsed response head. `headers` are end-to-end only."""

    __slots__ = ("status", "reason", "version", "headers", "content_length", "chunked",
                 "keep_alive", "upgrade", "cache_control")

    def __init__(self, status, reason, version, headers, content_length, chunked,
                 keep_alive, upgrade, cache_control=None):
        self.status: int = status
        self.reason: bytes = reason
        self.version: bytes = version
        self.headers: list = headers
        self.content_length: int | None = content_length
        self.chunked: bool = chunked
        self.keep_alive: bool = keep_alive     # the upstream lets us reuse the connection
        self.upgrade: bytes | None = upgrade
        self.cache_control: bytes | None = cache_control   # read for skew protection (immutable)


def _split_headers(raw_headers, special: frozenset):
    """One pass over raw headers: end-to-end ones kept, `special` ones collected.

    Returns (kept, specials) where specials maps a lowercase special name to the
    list of its values. Header names with '_' are dropped: some backends read
    them as '-', which would let a client smuggle e.g. a Transfer_Encoding.
    """
    kept = []
    specials: dict[bytes, list[bytes]] = {}
    seen = _NAMES_SEEN[special]
    for field in raw_headers:
        name = field[0]
        kind = seen.get(name)
        if kind is None:
            kind = _name_kind(name, special)
            seen.put(name, kind, len(name))
        if kind is _KEEP:
            kept.append(field)            # the (name, value) pair as parsed: no new tuple
        elif kind is not _DROP:
            if kind is _CACHE_CONTROL:   # read by lb, and passed on (an identity test: a hot path)
                kept.append(field)
            if kind in specials:
                specials[kind].append(field[1])
            else:
                specials[kind] = [field[1]]
    return kept, specials


# What a header name is, as sent (a site sends few distinct ones): remembered per exact name
# and per set of special names, so that no name is lowercased and looked up per message
# (_split_headers 1.06 -> 0.48 µs for nginx's 5 response headers, bench/hotpath.py).
_KEEP, _DROP = b"", False
_NAMES_SEEN: dict = {}


def _name_kind(name: bytes, special: frozenset):
    """A special name's lowercase form, _KEEP for an end-to-end one, _DROP for one with '_'."""
    lname = name.lower()
    if lname in special:
        return _CACHE_CONTROL if lname == _CACHE_CONTROL else lname
    return _DROP if b"_" in name else _KEEP


_FRAMING = frozenset({b"content-length", b"host", b"expect", b"via"})
# Special names that still pass on: collected for lb to read, kept in the head as they came.
_CACHE_CONTROL = b"cache-control"
_READ_AND_KEPT = frozenset({_CACHE_CONTROL})
_REQUEST_SPECIAL = HOP_BY_HOP | _FRAMING | REQUEST_OWNED
# Host, Expect and Via are end-to-end in a response: they pass as they came.
_RESPONSE_SPECIAL = HOP_BY_HOP | frozenset({b"content-length"}) | _READ_AND_KEPT
_NAMES_SEEN.update({special: Memo(1024, 64 * 1024, CACHED_MAX_BYTES)
                    for special in (_REQUEST_SPECIAL, _RESPONSE_SPECIAL)})


def head_size(target: bytes, raw_headers) -> int:
    """The bytes of a request head that count against max_header_bytes."""
    return len(target) + sum(len(n) + len(v) + 4 for n, v in raw_headers)


def check_head_size(target: bytes, raw_headers, max_header_bytes: int) -> None:
    """Raises HttpError(431) when the request line target and headers exceed the limit."""
    if head_size(target, raw_headers) > max_header_bytes:
        raise HttpError("request header section too large", 431)


def check_target(target: bytes, max_target_bytes: int) -> None:
    """Raises HttpError(414) for a request target over the limit."""
    if len(target) > max_target_bytes:
        raise HttpError("request target too long", 414)


# What llhttp and h11 refuse in a request target (SP, HTAB, CTL, DEL and bytes past ASCII: each
# parser's own grammar, checked in tests/unit/test_h2head.py): HTTP/2's :path is held to it.
_TARGET_REFUSED = re.compile(rb"[\x00-\x20\x7f-\xff]")


def check_target_grammar(target: bytes) -> None:
    """Raises HttpError(400) for a target an HTTP/1.1 request line could not carry."""
    if _TARGET_REFUSED.search(target) is not None:
        raise HttpError(f"malformed request target: {target[:60]!r}", 400)


def check_header_count(count: int, max_headers: int) -> None:
    """Raises HttpError(431) for more header fields than the limit."""
    if count > max_headers:
        raise HttpError(f"more than {max_headers} header fields", 431)


def analyze_request(method: bytes, target: bytes, version: bytes, raw_headers) -> RequestHead:
    """Validate a request and decide its framing. Raises HttpError(400/405)."""
    if method == b"CONNECT":
        raise HttpError("CONNECT is not supported by this proxy", 405)
    if method not in METHODS:
        raise HttpError(f"unknown method {method[:20]!r}", 400)
    if version not in (b"1.1", b"1.0"):
        raise HttpError(f"unsupported HTTP version {version[:10]!r}", 400)
    kept, specials = _split_headers(raw_headers, _REQUEST_SPECIAL)
    hosts = specials.get(b"host")
    if hosts is not None and len(hosts) == 1 and len(specials) <= 2:
        # Only end-to-end fields, one Host and at most a Connection naming no field (a
        # browser's GET, wrk's, with or without `Connection: close`): nothing below but the
        # Host check and keep-alive apply, and the head is the general path's with its defaults
        # (analyze_request 1.0 -> 0.6 µs, bench/hotpath.py; 2.6 -> 1.0 µs with a Connection;
        # tests/unit/test_http1.py checks that both paths give the same head).
        connection = connection_tokens(specials)
        if len(specials) == 1 or (b"connection" in specials and connection <= CONNECTION_OPTIONS):
            host = hosts[0].strip()
            _check_host(host, target)
            keep_alive = b"close" not in connection if version == b"1.1" else b"keep-alive" in connection
            return RequestHead(method, target, version, kept, host, None, False, keep_alive, None,
                               False, None, None)
    return _analyze_request(method, target, version, kept, specials)


def _analyze_request(method: bytes, target: bytes, version: bytes, kept: list, specials: dict) -> RequestHead:
    """analyze_request's general path, for any mix of special fields."""
    content_length, chunked = body_framing(specials)
    hosts = specials.get(b"host")
    if hosts is not None and len(hosts) > 1:
        raise HttpError("more than one Host header", 400)
    if hosts is None and version == b"1.1":
        raise HttpError("HTTP/1.1 request without Host", 400)
    host = hosts[0].strip() if hosts else None
    _check_host(host, target)
    connection = connection_tokens(specials)
    kept = drop_named(kept, connection)
    if version == b"1.1":
        keep_alive = b"close" not in connection
    else:
        # An HTTP/1.0 message with Transfer-Encoding is processed, then closed (RFC 9112 6.1).
        keep_alive = b"keep-alive" in connection and not chunked
    upgrade = None
    if b"upgrade" in connection and b"upgrade" in specials:
        if version != b"1.1":
            # llhttp would switch anyway and end the request at its head; h11 would wait.
            raise HttpError("HTTP/1.0 cannot switch protocols (Upgrade)", 400)
        upgrade = specials[b"upgrade"][0].strip()
        if upgrade.lower() == b"h2c":
            # HTTP/2 by Upgrade (which RFC 9113 dropped) is not offered: the request is served
            # as HTTP/1.1 and its Upgrade, a hop-by-hop field, goes no further.
            upgrade = None
        elif chunked or content_length:
            # llhttp ends an Upgrade request at its head and hands the body over as the
            # new protocol's bytes (or, if the backend refuses to switch, as the next
            # request); h11 reads it as a body. One meaning for both: none.
            raise HttpError("an Upgrade request may not carry a body", 400)
    expect = specials.get(b"expect")
    expect_continue = bool(expect) and expect[0].strip().lower() == b"100-continue"
    via = b", ".join(specials[b"via"]) if b"via" in specials else None
    xff, forwarded = specials.get(b"x-forwarded-for"), specials.get(b"forwarded")
    forwarded_by = (b", ".join(xff) if xff else None, b", ".join(forwarded) if forwarded else None) \
        if xff or forwarded else None
    return RequestHead(method, target, version, kept, host, content_length, chunked, keep_alive, upgrade,
                       expect_continue, via, forwarded_by)


_GOOD_HOSTS = Memo(1024, 64 * 1024, 255)   # Host values seen valid (a site has few): no regex per request


def _check_host(host: bytes | None, target: bytes) -> None:
    """A Host that is a host[:port], and an absolute-form target whose authority is that
    Host (HAProxy 2.6 refuses a mismatch). Raises HttpError(400)."""
    if host is not None and _GOOD_HOSTS.get(host) is None:
        if not _HOST_VALUE_RE.match(host):
            raise HttpError(f"malformed Host: {host[:60]!r}", 400)
        _GOOD_HOSTS.put(host, True, len(host))
    if target[:1] != b"/" and target != b"*":
        absolute = _ABSOLUTE_RE.match(target)
        if absolute is None:
            raise HttpError(f"malformed request target: {target[:60]!r}", 400)
        authority = absolute.group(1)
        if b"@" in authority:
            raise HttpError("a request target with user info", 400)
        if host is None or authority.lower() != host.lower():
            raise HttpError("the request target's authority is not the Host", 400)


def analyze_response(status: int, reason: bytes, version: bytes, raw_headers) -> ResponseHead:
    """Validate a response head and decide its framing. Raises HttpError(502)."""
    if not 100 <= status <= 599:
        raise HttpError(f"bad response from backend: status {status} is outside 100-599", 502)
    try:
        kept, specials = _split_headers(raw_headers, _RESPONSE_SPECIAL)
        content_length, chunked = body_framing(specials)
    except HttpError as exc:
        raise HttpError(f"bad response from backend: {exc.message}", 502) from None
    connection = connection_tokens(specials)
    kept = drop_named(kept, connection)
    keep_alive = b"close" not in connection if version == b"1.1" else b"keep-alive" in connection
    upgrade = specials[b"upgrade"][0] if status == 101 and b"upgrade" in specials else None
    cache_control = specials.get(b"cache-control")
    return ResponseHead(status, reason, version, kept, content_length, chunked, keep_alive, upgrade,
                        b", ".join(cache_control) if cache_control else None)


def client_address(forwarded_for: bytes | None, peer: bytes, trusted) -> bytes:
    """Whom a request came from: the rightmost address of the X-Forwarded-For chain plus the
    peer that `trusted` (a predicate) does not vouch for; the leftmost when it vouches for all."""
    chain = [part.strip() for part in forwarded_for.split(b",")] if forwarded_for else []
    chain.append(peer)
    for address in reversed(chain):
        if not trusted(address):
            return address
    return chain[0]
