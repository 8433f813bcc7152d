"""Client side: parse, route, forward, stream back.

Theory of operation
-------------------
Everything on the hot path is a callback; no coroutine or task is made per
request (a task costs more than the whole llhttp parse). A `ClientConnection`
is an asyncio Protocol and the request parser's sink. Each parsed request head
becomes an `Exchange`, which chooses a backend, takes an idle pooled upstream
connection (or opens one), forwards the head and streams the body, then
streams the response back. Requests on one client connection are routed one
by one, so a keep-alive client is never bound to a backend; pipelined
requests queue in `pending` and are answered in order.

Backpressure: a `FlowControl` per client transport pauses reading while any
reason holds (the upstream cannot take more, too much is buffered, a queue of
pipelined requests); the response side pauses the upstream's reading while
the client's write buffer is full.

Retries: a request is retried on another backend when connecting fails, or
when an upstream connection fails before any response byte and the request is
idempotent and its body is still held (`REPLAY_LIMIT_BYTES`). Once a response
byte has reached the client, a failure only ever closes the client connection:
no fake end of body.

Timeouts run off one sweeper (`Proxy._sweep`, every `SWEEP_INTERVAL_S`) that
compares deadlines, instead of a timer per request.

Every LbError becomes a response in exactly one place: `error_response`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque

from . import http1
from .errors import LbError
from .http1 import LAST_CHUNK, REPLAY_LIMIT_BYTES, chunk
from . import health
from .pinning import KEPT, Pinning
from .pool import DRAINED, DRAINING, MAINT, POLICIES, READY, Backend, Pool, transition
from .stats import ProxyStats
from .upstream import UpstreamPools

log = logging.getLogger("lb.proxy")

SWEEP_INTERVAL_S = 0.1
MAX_PIPELINED = 16
INFINITY = float("inf")
WEBSOCKET_GOING_AWAY = b"\x88\x02\x03\xe9"   # a server close frame, status 1001
WEBSOCKET_CLOSE_WAIT_S = 2.0                    # for the client's side of the closing handshake
REASONS = {400: b"Bad Request", 405: b"Method Not Allowed", 408: b"Request Timeout",
           413: b"Content Too Large", 431: b"Request Header Fields Too Large",
           500: b"Internal Server Error", 502: b"Bad Gateway",
           503: b"Service Unavailable", 504: b"Gateway Timeout"}

# Client deadline kinds
HEAD, IDLE, BODY, NONE = "head", "idle", "body", "none"
# How a response body is framed towards the client
NO_BODY, RAW, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3


def error_response(exc: LbError) -> bytes:
    """The one place an LbError becomes bytes on the wire: short text, then close."""
    status = exc.status if exc.status in REASONS else 500
    reason = REASONS[status]
    body = b"%d %s\n" % (status, reason)
    if status < 500 or status in (502, 503, 504):
        body += exc.message.encode("utf-8", "replace")[:200] + b"\n"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, reason, len(body), body))


class FlowControl:
    """Pauses a transport's reading while any named reason holds."""

    __slots__ = ("_transport", "_reasons")

    def __init__(self, transport):
        self._transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pause_reading()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons and not self._transport.is_closing():
                self._transport.resume_reading()


class Exchange:
    """One request and its response, from parsed head to the last byte back."""

    __slots__ = ("proxy", "client", "head", "head_bytes", "backend", "upstream", "tried",
                 "chunks", "held_bytes", "replayable", "request_done", "started", "status",
                 "body_mode", "bytes_out", "response_bytes_seen", "switching", "finished",
                 "keep_client", "upstream_keep", "version", "set_cookie", "pin_how")

    def __init__(self, proxy: "Proxy", client: "ClientConnection", head: http1.RequestHead):
        self.proxy = proxy
        self.client = client
        self.head = head
        self.head_bytes = http1.serialize_request(head, client.ip, ())
        self.backend = None
        self.upstream = None
        self.tried: list = []
        self.chunks: list[bytes] = []   # body held for sending or for a replay
        self.held_bytes = 0
        self.replayable = True
        self.request_done = False
        self.upstream_keep = False
        self.started = time.monotonic()
        self.status = 0                 # 0 until a response head went to the client
        self.body_mode = NO_BODY
        self.bytes_out = 0
        self.response_bytes_seen = False
        self.switching = False
        self.finished = False
        self.keep_client = head.keep_alive
        self.version = None             # the code version this request is served by
        self.set_cookie = b""           # a Set-Cookie line when the pin is new or moved
        self.pin_how = None             # kept / assigned / forward / backward

    # -- routing -------------------------------------------------------------
    def start(self) -> None:
        pinning = self.proxy.pinning
        if pinning is not None and not self._pick_version(pinning):
            self.fail(LbError("no backend available", 503))
            return
        backend = self.proxy.pool.choose(self.tried, self.version)
        if backend is None:
            self.fail(LbError("no backend available", 503))
            return
        self.backend = backend
        self.tried.append(backend)
        backend.inflight += 1
        conn = self.proxy.upstreams.acquire(backend)
        if conn is not None:
            self._attach(conn)
        else:
            self.proxy.loop.create_task(self._connect(backend))

    def _pick_version(self, pinning) -> bool:
        """Decide (first try) or revisit (a retry) the version; False when none is left."""
        pool = self.proxy.pool
        if not self.tried:
            version, how = pinning.route(pinning.read_pin(self.head.headers, pool.versions), pool,
                                         self.proxy.now())
        else:
            version, how = pinning.retry_version(self.version, pool, self.tried)
        if version is None:
            return False
        if how is not KEPT:
            self.set_cookie = pinning.set_cookie(version)
        self.version = version
        self.pin_how = how
        return True

    async def _connect(self, backend) -> None:
        try:
            conn = await self.proxy.upstreams.connect(backend)
        except LbError as exc:
            backend.errors += 1
            backend.stats.connect_errors += 1
            self.proxy.passive(backend, failed=True)
            self._retry_or_fail(exc)
            return
        if self.finished or self.backend is not backend:
            self.proxy.upstreams.release(conn, reusable=True)
            return
        self._attach(conn)

    def _attach(self, conn) -> None:
        self.upstream = conn
        conn.begin(self, self.head.method, self.head.upgrade is not None)
        pieces = [self.head_bytes]
        frame = chunk if self.head.chunked else bytes
        pieces += map(frame, self.chunks)
        if self.request_done and self.head.chunked:
            pieces.append(LAST_CHUNK)
        conn.write(b"".join(pieces) if len(pieces) > 1 else pieces[0])
        if not self.replayable:
            self.chunks = []
        self.client.flow.resume("buffer")

    def _retry_or_fail(self, exc: LbError) -> None:
        if self.backend is not None:
            self.backend.stats.retries += 1
        self._leave_backend()
        if len(self.tried) <= self.proxy.config.retries and not self.client.closed:
            self.proxy.retries += 1
            self.start()
        else:
            self.fail(exc)

    def _leave_backend(self) -> None:
        backend = self.backend
        if backend is not None:
            backend.inflight -= 1
            self.backend = None
            if backend.admin_state == DRAINING and backend.idle:
                self.proxy.backend_idle(backend)
        self.upstream = None

    # -- request body from the client ----------------------------------------
    def add_body(self, data: bytes) -> None:
        if self.finished:
            return
        upstream = self.upstream
        if upstream is not None:
            upstream.write(chunk(data) if self.head.chunked else data)
            if not self.replayable:
                return
        self.chunks.append(data)
        self.held_bytes += len(data)
        if self.held_bytes > REPLAY_LIMIT_BYTES:
            if upstream is not None:
                self.replayable = False
                self.chunks = []
            else:
                self.client.flow.pause("buffer")

    def end_body(self) -> None:
        self.request_done = True
        upstream = self.upstream
        if upstream is not None and not self.finished:
            if self.head.chunked:
                upstream.write(LAST_CHUNK)
            if not self.response_bytes_seen:
                upstream.deadline = upstream.first_byte_deadline()

    # -- response from the upstream ------------------------------------------
    def on_response(self, head: http1.ResponseHead) -> None:
        status = head.status
        if status < 200:
            self._interim(head)
            return
        request = self.head
        if request.method == b"HEAD" or status in (204, 304):
            self.body_mode = NO_BODY
            framing = b"" if status == 204 or head.content_length is None \
                else b"Content-Length: %d\r\n" % head.content_length
        elif head.content_length is not None:
            self.body_mode = RAW
            framing = b"Content-Length: %d\r\n" % head.content_length
        elif request.version == b"1.1":
            self.body_mode = CHUNKED
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            self.body_mode = UNTIL_CLOSE
            framing = b""
        keep = self.keep_client and self.request_done and self.body_mode != UNTIL_CLOSE \
            and not self.proxy.closing
        self.keep_client = keep
        if not keep:
            framing += b"Connection: close\r\n"
        elif request.version == b"1.0":
            framing += b"Connection: keep-alive\r\n"
        self.status = status
        self.upstream_keep = head.keep_alive
        if self.set_cookie:
            framing += self.set_cookie
        self.client.write(http1.serialize_response(status, head.reason, head.headers, framing))

    def _interim(self, head: http1.ResponseHead) -> None:
        if head.status == 101:
            if self.head.upgrade is None:
                raise LbError("backend switched protocols without being asked", 502)
            self.status = 101
            self.switching = True
            self.client.write(http1.serialize_response(
                101, head.reason, head.headers,
                b"Connection: upgrade\r\nUpgrade: " + (head.upgrade or self.head.upgrade) + b"\r\n"))
        elif self.head.version == b"1.1":
            self.client.write(http1.serialize_response(head.status, head.reason, head.headers, b""))

    def on_response_body(self, data: bytes) -> None:
        mode = self.body_mode
        if mode == NO_BODY:
            return
        self.bytes_out += len(data)
        self.client.write(chunk(data) if mode == CHUNKED else data)

    def on_response_end(self) -> None:
        if self.switching:
            return  # complete_switch runs once the parser hands over what followed
        if self.body_mode == CHUNKED:
            self.client.write(LAST_CHUNK)
        self._done(reusable=self.request_done and self.upstream_keep)
        self.client.exchange_done(self, self.keep_client and self.request_done)

    def complete_switch(self, upstream_leftover: bytes) -> None:
        """The backend answered 101: from now on bytes flow both ways untouched."""
        self.switching = False
        upstream, backend = self.upstream, self.backend
        backend.tunnels += 1
        self._done(reusable=None)
        upstream.exchange = None
        upstream.deadline = INFINITY
        self.client.start_tunnel(upstream, backend)
        if upstream_leftover:
            self.client.write(upstream_leftover)

    # -- the end of an exchange -----------------------------------------------
    def _done(self, reusable: bool | None) -> None:
        """Count, log, and hand the upstream back (None: it becomes a tunnel)."""
        self.finished = True
        backend = self.backend
        backend.requests += 1
        now = time.monotonic()
        backend.stats.record(backend.version, self.status, now - self.started, now)
        if self.status >= 500:
            backend.errors += 1
            self.proxy.passive(backend, failed=True)
        elif backend.hstate.passive_fails:
            self.proxy.passive(backend, failed=False)
        if reusable is not None:
            self.proxy.upstreams.release(self.upstream, reusable)
        self._leave_backend()
        self.proxy.access_log.write(self, backend)

    def fail(self, exc: LbError) -> None:
        """Answer with an error if nothing was sent yet; otherwise cut the client."""
        if self.finished:
            return
        self.finished = True
        # After retries the request holds no backend: the last one tried answers for it.
        backend = self.backend or (self.tried[-1] if self.tried else None)
        if self.upstream is not None:
            self.upstream.abort()
        self._leave_backend()
        if backend is not None:
            backend.stats.lb_failures += 1
        if self.status == 0 and not self.client.closed:
            self.status = exc.status
            self.client.write(error_response(exc))
            self.proxy.stats.lb_failure(str(exc.status))
        else:
            self.proxy.stats.lb_failure("cut")       # the client connection is cut
        self.proxy.access_log.write(self, backend)
        self.client.exchange_done(self, keep_alive=False)

    def upstream_failed(self, conn, exc: LbError) -> None:
        """The backend sent something unparseable."""
        if conn is self.upstream and not self.finished:
            if conn.backend is not None:
                conn.backend.errors += 1
            self.fail(exc)

    def upstream_lost(self, conn) -> None:
        """The upstream connection closed under this exchange."""
        if conn is not self.upstream or self.finished:
            return
        if self.body_mode == UNTIL_CLOSE and self.status:
            self._done(reusable=False)
            self.client.exchange_done(self, keep_alive=False)
            return
        if self.response_bytes_seen or self.status:
            self.fail(LbError("backend closed the connection mid-response", 502))
            return
        # Nothing came back: safe to resend when idempotent and the body is still held.
        if self.head.idempotent and self.replayable:
            self.upstream = None
            self._retry_or_fail(LbError("backend closed the connection before answering", 502))
        else:
            self.fail(LbError("backend closed the connection before answering", 502))

    def upstream_timed_out(self, conn) -> None:
        if self.response_bytes_seen:
            self.fail(LbError("backend stalled mid-response", 504))
        else:
            self.fail(LbError("backend did not answer in time", 504))

    def client_gone(self) -> None:
        """The client went away: nothing of this exchange is worth finishing."""
        if self.finished:
            return
        self.finished = True
        if self.upstream is not None:
            self.upstream.abort()
        backend = self.backend
        self._leave_backend()
        self.proxy.access_log.write(self, backend)


class ClientConnection(asyncio.Protocol):
    """One client TCP connection; the request parser's sink."""

    def __init__(self, proxy: "Proxy"):
        self.proxy = proxy
        self.transport = None
        self.flow: FlowControl | None = None
        self.ip = b"-"
        self.parser = proxy.request_parser_class(self, proxy.config.limits.max_header_bytes)
        self.current: Exchange | None = None
        self.reading: Exchange | None = None     # the exchange whose request is being parsed
        self.pending: deque[Exchange] = deque()
        self.held = b""                          # bytes after an Upgrade request, until 101 or not
        self.holding = False
        self.tunnel = None                       # the UpstreamConnection after a 101
        self.tunnel_backend = None
        self.tunnel_websocket = False
        self.discarding = False                  # a WebSocket closed by lb, awaiting the client's end
        self.deadline = INFINITY
        self.deadline_kind = HEAD
        self.got_bytes = False
        self.write_paused = False
        self.eof_written = False                 # a tunnel's backend half-closed towards us
        self.eof_seen = False                    # the client half-closed its side of a tunnel
        self._corked: list[bytes] | None = None  # writes held while one upstream read is parsed
        self.closed = False
        self.closing_after_current = False
        self.deferred_error: LbError | None = None   # a bad pipelined request, answered in turn

    # -- asyncio Protocol ------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.flow = FlowControl(transport)
        peer = transport.get_extra_info("peername")
        self.ip = peer[0].encode() if peer else b"-"
        self.proxy.clients.add(self)
        self.deadline = self.proxy.now() + self.proxy.config.timeouts.client_header
        if len(self.proxy.clients) > self.proxy.config.limits.max_connections:
            self.write(error_response(LbError("too many connections", 503)))
            self.close()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.discarding:
            return                # a WebSocket's last frames after lb sent its close
        if self.holding:
            self.held += data
            self.flow.pause("upgrade")
            return
        if self.deferred_error is not None:
            return
        self.got_bytes = True
        if self.deadline_kind is BODY:
            self.deadline = self.proxy.now() + self.proxy.config.timeouts.client_idle
        try:
            self.parser.feed(data)
        except LbError as exc:
            self._parse_error(exc)

    def eof_received(self):
        if self.discarding:
            return False          # the client ended the closing handshake: close
        if self.tunnel is not None:
            # Both directions ended: close (connection_lost closes the other side too).
            self.eof_seen = True
            return not self.tunnel.eof_seen and self.tunnel.write_eof()
        if self.current is not None and self.current.request_done and not self.pending:
            # A half-close after a complete request: answer it, then close.
            self.closing_after_current = True
            return True
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.proxy.clients.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
            self.proxy.tunnel_closed(self, self.tunnel_backend)
        for exchange in (self.current, *self.pending):
            if exchange is not None:
                exchange.client_gone()
        self.current = None
        self.pending.clear()
        self.proxy.connection_closed()

    def pause_writing(self) -> None:
        self.write_paused = True
        upstream = self._upstream()
        if upstream is not None:
            upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        upstream = self._upstream()
        if upstream is not None:
            upstream.resume_reading()

    def _upstream(self):
        if self.tunnel is not None:
            return self.tunnel
        current = self.current
        return current.upstream if current is not None else None

    # -- parser sink -------------------------------------------------------------
    def on_request_begin(self) -> None:
        if self.deadline_kind is not HEAD:
            self.deadline_kind = HEAD
            self.deadline = self.proxy.now() + self.proxy.config.timeouts.client_header

    def on_request(self, head: http1.RequestHead) -> None:
        exchange = Exchange(self.proxy, self, head)
        self.reading = exchange
        if head.has_body:
            self.deadline_kind = BODY
            self.deadline = self.proxy.now() + self.proxy.config.timeouts.client_idle
        else:
            self.deadline_kind = NONE
            self.deadline = INFINITY
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:
            self.pending.append(exchange)
            if len(self.pending) >= MAX_PIPELINED:
                self.flow.pause("pipeline")

    def on_request_body(self, data: bytes) -> None:
        self.reading.add_body(data)

    def on_request_end(self) -> None:
        exchange = self.reading
        if self.deadline_kind is BODY:
            self.deadline_kind = NONE
            self.deadline = INFINITY
        exchange.end_body()
        if exchange.head.upgrade is not None and not exchange.finished:
            self.holding = True

    # -- used by exchanges ---------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        elif not self.closed and not self.eof_written:
            self.transport.write(data)

    def write_eof(self) -> bool:
        """Half-close towards the client (tunnels); False when not possible."""
        if self.closed or self.eof_written or not self.transport.can_write_eof():
            return False
        self.uncork()
        self.transport.write_eof()
        self.eof_written = True
        return True

    def cork(self) -> None:
        """Hold writes until uncork(): a response head and body go out in one syscall."""
        self._corked = []

    def uncork(self) -> None:
        held, self._corked = self._corked, None
        if held and not self.closed:
            self.transport.write(b"".join(held) if len(held) > 1 else held[0])

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        """The response went out whole (or failed): next request, idle, or close."""
        if exchange is not self.current:
            return
        self.current = None
        if not keep_alive or self.proxy.closing:
            self.close()
            return
        if self.holding:
            self._refused_upgrade()
        if self.pending:
            # Not now: this may run inside the upstream parser's callback, and the
            # next request could take that same connection from the idle pool.
            self.current = self.pending.popleft()
            self.flow.resume("pipeline")
            self.proxy.loop.call_soon(self._start_current)
        elif self.deferred_error is not None:
            self._answer_error(self.deferred_error)
        elif self.closing_after_current:
            self.close()
        elif self.deadline_kind is NONE:
            self.deadline_kind = IDLE
            self.deadline = self.proxy.now() + self.proxy.config.timeouts.client_idle

    def _start_current(self) -> None:
        if self.current is not None and not self.closed and self.current.backend is None \
                and not self.current.finished:
            self.current.start()

    def _refused_upgrade(self) -> None:
        """The backend did not switch: go on parsing HTTP from where the request ended."""
        self.holding = False
        held, self.held = self.held, b""
        self.parser.leftover += held
        self.flow.resume("upgrade")
        try:
            self.parser.reset()
        except LbError as exc:
            self._parse_error(exc)

    def start_tunnel(self, upstream, backend) -> None:
        self.holding = False
        self.tunnel = upstream
        self.tunnel_backend = backend
        self.tunnel_websocket = (self.current.head.upgrade or b"").lower() == b"websocket"
        self.proxy.tunnels.setdefault(backend.name, set()).add(self)
        upstream.tunnel_peer = self
        self.deadline = INFINITY
        self.deadline_kind = NONE
        data, self.held = self.parser.leftover + self.held, b""
        if data:
            self.tunnel.write(data)
        self.flow.resume("upgrade")

    def close(self) -> None:
        if not self.closed:
            self.uncork()
            self.closed = True
            self.transport.close()

    def end_tunnel(self) -> None:
        """Close a tunnel at a drain deadline. Other tunnels close at once. A WebSocket
        client gets a close frame (1001) and lb's half-close, then up to
        WEBSOCKET_CLOSE_WAIT_S to answer with its own close and end the connection (the
        closing handshake of RFC 6455 section 7): a client busy sending meets no reset,
        and reads the close frame after what it sent."""
        upstream, self.tunnel = self.tunnel, None
        if upstream is not None:
            upstream.tunnel_peer = None
            upstream.close()
        if not self.tunnel_websocket:
            self.close()
            return
        self.discarding = True
        self.write(WEBSOCKET_GOING_AWAY)
        if not self.write_eof():
            self.close()
            return
        self.deadline_kind = NONE
        self.deadline = self.proxy.now() + WEBSOCKET_CLOSE_WAIT_S

    def _parse_error(self, exc: LbError) -> None:
        """A bad request: answered in order, after the good ones before it, then close."""
        self.flow.pause("error")
        self.deferred_error = exc
        reading = self.reading
        if reading is not None and not reading.request_done:
            # The bad bytes are inside this request's body: it cannot be sent on.
            if reading is self.current:
                reading.fail(exc)
                return
            self.pending.remove(reading)
        if self.current is None:
            self._answer_error(exc)

    def _answer_error(self, exc: LbError) -> None:
        self.proxy.stats.lb_failure(str(exc.status))
        self.write(error_response(exc))
        self.proxy.access_log.write_error(self, exc)
        self.close()

    def on_timeout(self) -> None:
        kind = self.deadline_kind
        self.deadline = INFINITY
        if kind is HEAD and self.got_bytes:
            self._answer_error(LbError("request header not received in time", 408))
            return
        if kind is BODY and self.current is not None:
            self.current.fail(LbError("request body not received in time", 408))
        self.close()


class Proxy:
    """The listeners, the pool, the upstream pools, the sweeper, and shutdown."""

    def __init__(self, config, loop: asyncio.AbstractEventLoop, access_log):
        self.config = config
        self.loop = loop
        self.now = loop.time
        self.pool = Pool(config.backends, config.balance)
        self.request_parser_class, response_parser_class = http1.parsers_for(config.http)
        self.upstreams = UpstreamPools(loop, config.timeouts, response_parser_class)
        self.clients: set[ClientConnection] = set()
        self.access_log = access_log
        self.closing = False
        self.retries = 0
        self.tunnels: dict[str, set[ClientConnection]] = {}
        self.removing: set[str] = set()          # dropped from the config: gone once drained
        self.state_changed = asyncio.Event()     # set and replaced on every node change
        self.checker = health.Checker(self)
        self.stats = ProxyStats()
        pin = config.pinning
        self.pinning = Pinning(pin.cookie, pin.max_age, pin.max_overload) if pin.mode == "version" else None
        self._servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_closed = asyncio.Event()

    async def start(self) -> None:
        """Bind every listener. Raises OSError when a port cannot be bound."""
        for host, port in self.config.listen:
            server = await self.loop.create_server(
                lambda: ClientConnection(self), host, port, backlog=2048, reuse_address=True)
            self._servers.append(server)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        self.checker.start()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for server in self._servers for sock in server.sockets]

    def _sweep(self) -> None:
        """Every timeout and drain deadline; it reschedules itself whatever happens."""
        try:
            now = self.now()
            drain_s = self.config.drain.timeout
            due = [c.on_timeout for c in self.clients if c.deadline <= now]
            due += [lambda b=b: self._cut(b) for b in self.pool.backends.values()
                    if b.admin_state == DRAINING and now >= b.drain_started + drain_s]
            due += [lambda: self.upstreams.expire(now), self.access_log.flush,
                    lambda: self._health_tick(now)]
            for action in due:
                try:
                    action()
                except Exception:  # a bug in one must not stop every other timeout
                    log.exception("timeout handling failed")
        finally:
            self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    # -- node states --------------------------------------------------------------
    def notify(self) -> None:
        """Wake whoever waits on a node change (admin `wait`)."""
        self.pool.changed()
        self.state_changed.set()
        self.state_changed = asyncio.Event()

    def set_admin_state(self, backend, event: str) -> str:
        """drain / ready / maint a node. Raises LbError when the table forbids it."""
        was = backend.admin_state
        new = transition(backend, event, self.now())
        if new == READY and was in (DRAINED, MAINT):
            health.start_checking(backend)   # checked before it gets traffic
        if new == DRAINING and was != DRAINING:
            self.stats.drains += 1
            backend.drain_cut = 0
            self.upstreams.close_idle(backend.name)
            if backend.idle:
                transition(backend, "idle", self.now())
                self.stats.drain_durations.append(0.0)
        elif not backend.takes_traffic:
            self.upstreams.close_idle(backend.name)
        self.notify()
        return backend.admin_state

    # -- health --------------------------------------------------------------------
    def apply_check(self, backend, ok: bool, version: str | None) -> None:
        hc, now = self.config.health, self.now()
        if health.record_check(backend, ok, version, now, hc.rise, hc.fall):
            health.ramp(backend, now, self.config.slow_start)   # from its first request on
            log.info("health: %s is %s (last check %s)", backend.name, backend.health,
                     backend.hstate.last_check)
            self.notify()

    def passive(self, backend, failed: bool) -> None:
        """A proxied outcome: connect error or 5xx (failed), or a success after failures."""
        cfg = self.config.passive
        if health.record_response(backend, failed, self.now(), cfg.failures, cfg.eject,
                                  self.pool.backends.values()):
            log.warning("passive: %s ejected for %.0fs after %d failures in a row", backend.name,
                        backend.hstate.ejected_until - self.now(), cfg.failures)
            self.upstreams.close_idle(backend.name)
            self.notify()

    def _health_tick(self, now: float) -> None:
        if health.end_ejections(self.pool.backends.values(), now):
            self.notify()
        ramping = [b for b in self.pool.backends.values() if b.hstate.ramp_start is not None]
        for backend in ramping:
            health.ramp(backend, now, self.config.slow_start)
        if ramping:
            self.pool.changed()          # version capacities follow the ramp

    def backend_idle(self, backend) -> None:
        """A draining node has nothing left in flight: it is drained."""
        transition(backend, "idle", self.now())
        self.stats.drain_durations.append(self.now() - backend.drain_started)
        self._drop_if_removed(backend)
        self.notify()

    def add_backend(self, config) -> Backend:
        backend = Backend(config)
        self.pool.backends[backend.name] = backend
        self.pool.note_version(backend.version)
        self.notify()
        return backend

    def remove_backend(self, backend) -> None:
        self.pool.backends.pop(backend.name, None)
        self.removing.discard(backend.name)
        self.upstreams.close_idle(backend.name)
        self.notify()

    def _drop_if_removed(self, backend) -> None:
        if backend.name in self.removing and backend.idle and backend.admin_state != DRAINING:
            self.remove_backend(backend)

    def reload(self, new) -> list[str]:
        """Apply a re-read config; returns what changed. Runtime admin states are kept.

        New backends join in maint; removed ones drain and are dropped when
        drained; a changed address applies to new connections. A weight or
        version applies when the file changed it, so a reload never undoes a
        runtime `set` the file did not touch.
        """
        old, changes = self.config, []
        before = {b.name: b for b in old.backends}
        for cfg in new.backends:
            backend = self.pool.backends.get(cfg.name)
            if backend is None:
                self.add_backend(cfg).admin_state = MAINT
                changes.append(f"added {cfg.name} {cfg.host}:{cfg.port} {cfg.version} (maint)")
                continue
            self.removing.discard(cfg.name)
            if (backend.host, backend.port) != cfg.address:
                changes.append(f"{cfg.name}: address {backend.address} -> {cfg.host}:{cfg.port}")
                backend.host, backend.port = cfg.address
                self.upstreams.close_idle(cfg.name)
            previous = before.get(cfg.name)
            for field in ("weight", "version"):
                wanted = getattr(cfg, field)
                if (previous is None or getattr(previous, field) != wanted) \
                        and getattr(backend, field) != wanted:
                    changes.append(f"{cfg.name}: {field} {getattr(backend, field)} -> {wanted}")
                    if field == "weight":
                        backend.set_weight(wanted)
                    else:
                        backend.version = wanted
            self.pool.note_version(backend.version)
        wanted_names = {b.name for b in new.backends}
        for name in [n for n in before if n not in wanted_names and n in self.pool.backends]:
            backend = self.pool.backends[name]
            self.removing.add(name)
            if backend.admin_state == READY:
                self.set_admin_state(backend, "drain")
            self._drop_if_removed(backend)
            changes.append(f"removed {name}" + (" (draining; dropped when drained)"
                                               if name in self.pool.backends else ""))
        if new.balance != old.balance:
            self.pool.policy = POLICIES[new.balance]()
            changes.append(f"balance: {old.balance} -> {new.balance}")
        fixed = {"listen", "http", "admin", "metrics", "access_log", "state_file"}
        for name in sorted(fixed):
            if getattr(new, name) != getattr(old, name):
                changes.append(f"{name}: changed in the file; takes effect at the next restart")
        self.config = dataclasses.replace(new, **{name: getattr(old, name) for name in fixed})
        self.upstreams.timeouts = self.config.timeouts
        self.notify()
        return changes

    def tunnel_closed(self, client, backend) -> None:
        tunnels = self.tunnels.get(backend.name)
        if not tunnels or client not in tunnels:
            return              # already counted out by _cut
        tunnels.discard(client)
        backend.tunnels -= 1
        if backend.admin_state == DRAINING and backend.idle:
            self.backend_idle(backend)

    def _cut(self, backend) -> None:
        """drain.timeout passed: close what is left on the node, then it is drained."""
        cut = 0
        for client in list(self.tunnels.pop(backend.name, ())):
            backend.tunnels -= 1
            client.end_tunnel()
            # the designed end of a long-lived connection (WebSocket close 1001), not a
            # failed request: its own reason, so a deploy's bake can tell it from a cut
            self.stats.lb_failure("drain_deadline")
            cut += 1
        for conn in [c for c in self.upstreams.active if c.backend is backend and c.exchange]:
            conn.exchange.fail(LbError("the backend was drained before it answered", 503))
            cut += 1
        backend.drain_cut = cut
        if backend.admin_state == DRAINING:
            transition(backend, "deadline", self.now())
            self.stats.drain_durations.append(self.now() - backend.drain_started)
        self._drop_if_removed(backend)
        log.warning("drain of %s: deadline passed, %d requests/tunnels cut", backend.name, cut)
        self.notify()

    def connection_closed(self) -> None:
        if self.closing and not self.clients:
            self._all_closed.set()

    async def shutdown(self, timeout_s: float) -> None:
        """Stop accepting, let requests in flight finish (up to timeout_s), close the rest."""
        self.closing = True
        for server in self._servers:
            server.close()
        for client in list(self.clients):
            if client.current is None and client.tunnel is None:
                client.close()
        if self.clients:
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout_s)
            except asyncio.TimeoutError:
                log.warning("shutdown: %d connections still busy after %.1fs; closing them",
                            len(self.clients), timeout_s)
        for client in list(self.clients):
            client.transport.abort()
        self.upstreams.close_idle()
        await self.checker.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.access_log.flush()
