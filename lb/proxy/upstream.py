"""Connections to backends: connect, keep-alive reuse, and the idle pool.

An `UpstreamConnection` is an asyncio Protocol that owns one response parser
and serves one exchange at a time (lb never pipelines upstream). It is the
parser's sink and hands every event to its current exchange, which decides;
after a complete response on a reusable connection it goes back to the idle
pool of its backend (LIFO, so warm connections are reused first and surplus
ones age out on `timeouts.upstream_idle`).

After a 101 the connection becomes one end of a tunnel: bytes go straight to
the client transport, with the same pause/resume backpressure.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from ..core.errors import HttpError

log = logging.getLogger("lb.upstream")
MAX_IDLE_PER_BACKEND = 128
READ_BYTES = 32 * 1024            # one read from a backend at most
WRITE_HIGH_BYTES = 32 * 1024      # a client's unsent bytes past which the backend is paused
INFINITY = float("inf")


class UpstreamConnection(asyncio.BufferedProtocol):
    """One TCP connection to a backend."""

    def __init__(self, pools: "UpstreamPools", route):
        self.pools = pools
        self.route = route
        self.transport: asyncio.Transport | None = None
        self.parser = pools.response_parser_class(self, pools.max_response_header_bytes)
        self.exchange = None
        self.client = None          # the ClientConnection served now: backpressure goes there
        self.reading_paused = False
        self.tunnel_peer = None     # the ClientConnection at the other end of a tunnel
        self.eof_seen = False       # the backend half-closed its side of a tunnel
        self.deadline = INFINITY
        self.closed = False

    # -- asyncio Protocol --------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES)   # a slow backend pauses the client
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # Reads go into one buffer shared by every upstream connection (one thread: each read is
    # copied out before the next), READ_BYTES at a time: what one slow client can make lb
    # hold is its write buffer plus one read, not uvloop's 256 KiB read.
    def get_buffer(self, sizehint: int):
        return self.pools.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.pools.read_buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        peer = self.tunnel_peer
        if peer is not None:
            peer.tunnel_received(data)
            return
        exchange = self.exchange
        if exchange is None:
            self.close()  # bytes nobody asked for: the connection is not trustworthy
            return
        self.deadline = self.pools.now() + self.pools.timeouts.upstream_idle
        exchange.response_bytes_seen = True
        client = self.client
        client.cork()
        try:
            self.parser.feed(data)
            if exchange.switching:
                exchange.complete_switch(self.parser.leftover)
        except HttpError as exc:
            # The detail is for the operator; the client only learns the backend misbehaved.
            log.warning("backend %s: %s", self.route.name, exc.message)
            exchange.upstream_failed(self, HttpError("bad response from backend", exc.status))
            self.close()        # never reused: what it sends next cannot be trusted
        except Exception:
            log.exception("bug while handling a response from %s; answering 500", self.route.name)
            exchange.upstream_failed(self, HttpError("internal error", 500))
            self.close()
        finally:
            client.uncork()

    def eof_received(self):
        if self.tunnel_peer is None:
            return False
        self.eof_seen = True        # both directions ended: close, the peer follows
        return not self.tunnel_peer.eof_seen and self.tunnel_peer.write_eof()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pools.forget(self)
        if self.tunnel_peer is not None:
            self.tunnel_peer.close()
        elif self.exchange is not None:
            self.exchange.upstream_lost(self)
        if self.parser is not None:        # its parser <-> adapter cycle, freed without the cyclic GC
            self.parser.close()
            self.parser = None

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.flow.pause("upstream")

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.flow.resume("upstream")

    # -- parser sink: everything goes to the exchange -----------------------
    def on_response(self, head) -> None:
        self.exchange.on_response(head)

    def on_response_body(self, data: bytes) -> None:
        self.exchange.on_response_body(data)

    def on_response_end(self) -> None:
        self.exchange.on_response_end()

    # -- used by the exchange ----------------------------------------------
    def begin(self, exchange, method: bytes, upgrade: bool) -> None:
        self.exchange = exchange
        self.client = exchange.client
        if exchange.client.write_paused:
            self.pause_reading()
        self.parser.expect(method, upgrade)
        # The first-byte clock starts once the whole request is sent (see Exchange.end_body):
        # a long upload is not the backend being slow.
        self.deadline = self.first_byte_deadline() if exchange.request_done else INFINITY

    def first_byte_deadline(self) -> float:
        return self.pools.now() + self.pools.timeouts.upstream_first_byte

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def write_eof(self) -> bool:
        """Half-close towards the backend (tunnels); False when not possible."""
        if self.closed or not self.transport.can_write_eof():
            return False
        self.transport.write_eof()
        return True

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def on_timeout(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_timed_out(self)
        else:
            self.close()


class UpstreamPools:
    """Idle connections per backend, and new connections when none is idle."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeouts, response_parser_class,
                 max_response_header_bytes: int = 65536):
        self.loop = loop
        self.now = loop.time
        self.timeouts = timeouts
        self.max_response_header_bytes = max_response_header_bytes
        self.read_buffer = memoryview(bytearray(READ_BYTES))
        self.response_parser_class = response_parser_class
        self.idle: dict[str, list[UpstreamConnection]] = {}
        self.active: set[UpstreamConnection] = set()
        self.tls: dict[str, tuple] = {}        # backend name -> (SSLContext, server name): lb/tls.py

    def acquire(self, route) -> UpstreamConnection | None:
        """A live idle connection to `route`, or None."""
        idle = self.idle.get(route.name)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self.active.add(conn)
                return conn
        return None

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """Back to the idle pool after a complete exchange, or closed."""
        conn.exchange = None
        conn.client = None
        if conn.reading_paused:
            conn.resume_reading()
        self.active.discard(conn)
        idle = self.idle.setdefault(conn.route.name, [])
        if not reusable or conn.closed or len(idle) >= MAX_IDLE_PER_BACKEND \
                or not conn.route.takes_traffic:
            conn.close()
            return
        conn.deadline = self.now() + self.timeouts.upstream_idle
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.active.discard(conn)
        idle = self.idle.get(conn.route.name)
        if idle and conn in idle:
            idle.remove(conn)

    def close_idle(self, name: str | None = None) -> None:
        """Close idle connections (of one backend, or all)."""
        names = [name] if name else list(self.idle)
        for name in names:
            for conn in self.idle.pop(name, []):
                conn.close()

    async def connect(self, route) -> UpstreamConnection:
        """A new connection to `route` (TLS too when its backend says `tls`: the handshake
        is part of the connect and its timeout). Raises HttpError(502) on failure or timeout."""
        tls = self.tls.get(route.name)
        options = {"ssl": tls[0], "server_hostname": tls[1]} if tls is not None else {}
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self, route),
                                            route.host, route.port, **options),
                self.timeouts.connect)
        except asyncio.TimeoutError:
            raise HttpError(f"connect to backend {route.name} timed out", 502) from None
        except OSError as exc:
            raise HttpError(f"connect to backend {route.name} failed: {exc.strerror or exc}", 502) from None
        self.active.add(conn)
        return conn

    def expire(self, now: float) -> None:
        """Time out connections whose deadline passed (called by the sweeper)."""
        for conn in [c for c in self.active if c.deadline <= now]:
            conn.on_timeout()
        for idle in self.idle.values():
            for conn in [c for c in idle if c.deadline <= now]:
                conn.close()
