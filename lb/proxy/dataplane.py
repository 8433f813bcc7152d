"""The data plane: listeners, client connections, upstream pools, the sweeper, shutdown.

Theory of operation
-------------------
Everything on the hot path is a callback; no coroutine or task is made per
request (a task costs more than the whole llhttp parse). A request's path
through the files: `ClientConnection` (client.py) reads bytes and feeds the
request parser (lb/core/http1/); each parsed head becomes an `Exchange`
(exchange.py), which asks pinning (lb/core/pinning.py) for a version and the
`RoutingTable` (lb/core/balance.py) for a route, takes an `UpstreamConnection`
(upstream.py), forwards, and streams the response back; errors become bytes
in responses.py; a line goes to the access log (accesslog.py).

The data plane decides no node state. It meets the control plane through the
one interface described in lb/core/planes.py: it applies the `RoutingView`
and config it is given, cuts a node when told, and sends `Report`s; the
methods below marked *interface* are all the control plane calls, and
`self.report_to` is all it calls back.

A connection is lb's from its accept: asyncio makes its `ClientConnection` there
but calls `connection_made` later (a turn of the loop later; on a TLS listener
once the handshake is done, and never for a handshake that fails). Until then it
is one of `opening` (held weakly: a failed handshake's entry goes with its
connection), and a shutdown waits for it as for a client. A worker that left
with one closed it under the client: at an upgrade the new workers get only the
connections not accepted yet.

Timeouts run off one sweeper (`_sweep`, every `SWEEP_INTERVAL_S`) that
compares deadlines, instead of a timer per request; it also writes the
access log and sends the periodic report.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
import weakref
from collections import Counter, deque
from typing import Callable

from .. import tls
from ..core import http1
from ..core.balance import RoutingTable
from ..core.config import LISTEN_BACKLOG
from ..core.errors import ConfigError, HttpError
from ..core.pinning import Pinning
from .skew import SkewPlane
from ..core.planes import NodeReport, Report, RoutingView
from ..core.seams import Client
from ..core.stats import StatsDelta
from .client import WEBSOCKET_CLOSE_WAIT_S, ClientConnection
from .upstream import UpstreamPools

log = logging.getLogger("lb.proxy")

SWEEP_INTERVAL_S = 0.1
REST_AFTER_S = 1.0          # an idle keep-alive connection's parser goes after this
# How long a closing TLS connection waits for the client's close_notify (asyncio's default is
# 30 s): a client that never answers must not hold a connection, or a stop, that long.
TLS_SHUTDOWN_TIMEOUT_S = 2.0


class DataPlane:
    """The listeners and everything that carries a request."""

    def __init__(self, config, loop: asyncio.AbstractEventLoop, access_log,
                 report_to: Callable[[Report], None]):
        self.config = config
        self.loop = loop
        self.now = loop.time
        self.report_to = report_to
        self.table = RoutingTable(config.balance)
        self.request_parser_class, response_parser_class = http1.parsers_for(config.http)
        self.upstreams = UpstreamPools(loop, config.timeouts, response_parser_class,
                                       config.limits.max_response_header_bytes)
        self.upstreams.tls = tls.backend_contexts(config)
        self.clients: set[Client] = set()        # HTTP/1.1 and HTTP/2 connections (lb/core/seams.py)
        # accepted, not yet made (see the top) -> when asyncio gives up its TLS handshake at the latest
        self.opening: weakref.WeakKeyDictionary[ClientConnection, float] = weakref.WeakKeyDictionary()
        self.handshake_timeout_s = config.timeouts.client_header     # the servers' own, set at start
        self.access_log = access_log
        self.closing = False
        self.tunnels: dict[str, set[ClientConnection]] = {}
        self.queue: deque = deque()             # exchanges waiting for a backend under max_conns
        self._dequeue_pending = False
        # counters for the next report
        self.failed: Counter = Counter()        # lb-made failures by reason
        self.h2_held = 0                        # bytes of read frames HTTP/2 connections hold back (h2client)
        self.retries = 0
        pin = config.pinning
        self.pinning = (Pinning(pin.cookie, pin.max_age, pin.max_overload, secure=pin.secure)
                        if pin.mode == "version" else None)
        self.skew = SkewPlane(config, loop) if self.pinning is not None else None
        self._skew_flags()
        self._trusted = _networks(config.trusted_proxies)
        self._report_pending = False
        self._servers: list[asyncio.base_events.Server] = []
        self.server_tls: dict[int, tls.ServerTls] = {}     # by listener index
        self._sweeper: asyncio.TimerHandle | None = None
        self._rested_at = 0.0
        self._all_closed = asyncio.Event()

    async def start(self, listeners) -> None:
        """Serve on `listeners`: the bound sockets the master shares with its other workers,
        in the order of the config's `listen`. A TLS listener's handshake must end within
        timeouts.client_header (a client that never finishes it holds nothing longer)."""
        now = time.time()
        for i, sock in enumerate(listeners):
            listener = self.config.listen[i] if i < len(self.config.listen) else None
            options = {}
            if listener is not None and listener.tls is not None:
                server_tls = self.server_tls[i] = tls.ServerTls(listener.tls, self.config.resolve,
                                                                tls.listener_where(self.config, i), now,
                                                                tls.pem_reader(self.config))
                options = {"ssl": server_tls.dispatcher,
                           "ssl_handshake_timeout": self.handshake_timeout_s,
                           "ssl_shutdown_timeout": TLS_SHUTDOWN_TIMEOUT_S}
            self._servers.append(await self.loop.create_server(
                functools.partial(ClientConnection, self, listener), sock=sock, backlog=LISTEN_BACKLOG,
                **options))
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for server in self._servers for sock in server.sockets]

    # -- interface: what the control plane calls ---------------------------------
    def apply_view(self, view: RoutingView) -> None:
        """A new routing view: routes that stopped taking traffic (or moved) lose their
        idle connections; the control plane gets a report written under this view."""
        for route in self.table.apply(view):
            self.upstreams.close_idle(route.name)
        self.report_soon()

    def apply_config(self, config) -> None:
        """A reloaded config: the settings a reload may change apply to new work."""
        if config.balance != self.config.balance:
            self.table.set_policy(config.balance)
        self.config = config
        self._trusted = _networks(config.trusted_proxies)
        if self.skew is not None:
            self.skew.configure(config)
        self._skew_flags()
        self.upstreams.timeouts = config.timeouts
        self.upstreams.max_response_header_bytes = config.limits.max_response_header_bytes
        self._reload_tls(config)

    def _reload_tls(self, config) -> None:
        """Every reload loads the certificates and the backends' CA files again, from the
        bytes the master read (lb/tls.py: a worker may no longer read a key file itself);
        the master loaded them first and refuses a reload with a bad one, and one that
        fails here anyway keeps what is in use."""
        try:
            self.upstreams.tls = tls.backend_contexts(config)
        except ConfigError as exc:
            log.error("reload: keeping the backends' TLS settings in use: %s", exc.message)
        now = time.time()
        for i, server_tls in self.server_tls.items():
            try:
                server_tls.replace(tls.load_certificates(config.listen[i].tls, config.resolve,
                                                         tls.listener_where(config, i), now, tls.pem_reader(config)))
            except ConfigError as exc:
                log.error("reload: keeping the certificates in use: %s", exc.message)

    def cut(self, name: str) -> None:
        """drain.timeout passed on `name`: close what is left on it; the count is reported."""
        route = self.table.routes.get(name)
        if route is None:
            return
        cut = 0
        for client in list(self.tunnels.pop(name, ())):
            route.tunnels -= 1
            client.end_tunnel()
            # the designed end of a long-lived connection (WebSocket close 1001), not a
            # failed request: its own reason, so a deploy's bake can tell it from a cut
            self.failed["drain_deadline"] += 1
            cut += 1
        for conn in [c for c in self.upstreams.active if c.route is route and c.exchange]:
            conn.exchange.fail(HttpError("the backend was drained before it answered", 503))
            cut += 1
        route.cut = (route.cut or 0) + cut
        self.report_soon()

    def collect(self) -> None:
        """Report now (the control plane is about to answer with counts)."""
        self.report()

    # -- reports -------------------------------------------------------------------
    def report_soon(self) -> None:
        """Report on the next turn of the loop: never from inside a callback that is
        still changing this data plane's state."""
        if not self._report_pending:
            self._report_pending = True
            self.loop.call_soon(self.report)

    def report(self) -> None:
        self._report_pending = False
        nodes = {}
        for name, route in self.table.routes.items():
            nodes[name] = NodeReport(route.inflight, route.tunnels, route.stats, route.outcomes,
                                     route.cut)
            route.stats, route.outcomes, route.cut = StatsDelta(), [], None
        pins = self.pinning.take_counts() if self.pinning is not None else None
        assets, skew = self.skew.take() if self.skew is not None else ([], None)
        failed, self.failed = self.failed, Counter()
        retries, self.retries = self.retries, 0
        self.report_to(Report(self.table.generation, nodes, failed, retries, pins, len(self.clients),
                              len(self.queue), assets, skew))

    def _skew_flags(self) -> None:
        """What each exchange asks of skew protection, as plain flags (bench/hotpath.py)."""
        self.skew_globs = self.skew is not None and self.skew.globs
        self.skew_secrets = self.skew is not None and self.skew.secrets

    def apply_assets(self, update) -> None:
        """What changed in the control plane's asset index (lb/core/skew.py)."""
        if self.skew is not None:
            self.skew.apply(update)

    # -- the queue for backends at max_conns (HAProxy's per-server maxconn) -------------------
    def enqueue(self, exchange) -> None:
        exchange.queued_at = self.now()
        self.queue.append(exchange)

    def dequeue_soon(self) -> None:
        if not self._dequeue_pending:
            self._dequeue_pending = True
            self.loop.call_soon(self._dequeue)

    def _dequeue(self) -> None:
        """Start waiting requests, oldest first, while a backend they may use has a free slot.
        First come, first served: the oldest waits for its own version even when a later
        one could go elsewhere (no overtaking, bounded work per freed slot)."""
        self._dequeue_pending = False
        queue = self.queue
        while queue:
            exchange = queue[0]
            if exchange.finished or exchange.client.closed:
                queue.popleft()
                continue
            if self.table.full(exchange.version):
                return
            queue.popleft()
            exchange.queued_at = 0.0
            exchange.start()

    def _expire_queue(self, now: float) -> None:
        limit = now - self.config.timeouts.queue
        queue = self.queue
        while queue and queue[0].queued_at <= limit:
            exchange = queue.popleft()
            exchange.queued_at = 0.0
            if not exchange.finished:
                exchange.fail(HttpError("no backend slot free in time (timeouts.queue)", 503))

    def outcome(self, route, failed: bool) -> None:
        """A passive-health outcome (connect error or 5xx; or a success after one). A failure
        is reported at once, not at the next sweep: the control plane counts the runs of every
        worker together, and ejects after passive.failures in a row across all of them."""
        route.fail_streak = route.fail_streak + 1 if failed else 0
        runs = route.outcomes
        if runs and runs[-1][0] == failed:
            runs[-1][1] += 1
        else:
            runs.append([failed, 1])
        if failed:
            self.report_soon()

    # -- used by client connections -------------------------------------------------
    def is_trusted(self, address: bytes) -> bool:
        """Whether `address` is one of trusted_proxies (its X-Forwarded-For is kept)."""
        if not self._trusted:
            return False
        try:
            ip = ipaddress.ip_address(address.decode("ascii").strip("[]"))
        except (ValueError, UnicodeDecodeError):
            return False
        return any(ip in network for network in self._trusted)

    def tunnel_closed(self, client, route) -> None:
        tunnels = self.tunnels.get(route.name)
        if not tunnels or client not in tunnels:
            return              # already counted out by cut()
        tunnels.discard(client)
        route.tunnels -= 1
        if route.draining and route.idle:
            self.report_soon()

    def connection_accepted(self, client) -> None:
        self.opening[client] = self.now() + self.handshake_timeout_s

    def connection_made(self, client) -> None:
        self.opening.pop(client, None)
        self.clients.add(client)

    def connection_closed(self) -> None:
        if self.closing:
            self._check_all_closed(self.now())

    def _check_all_closed(self, now: float) -> None:
        if self.closing and self._nothing_to_finish(now):
            self._all_closed.set()

    def _nothing_to_finish(self, now: float) -> bool:
        """No client connection, and none accepted that may still become one. The sweeper
        asks too: a failed TLS handshake tells no one; its entry goes with its connection, and
        in any case at its deadline, when asyncio aborts it."""
        return not self.clients and all(deadline <= now for deadline in self.opening.values())

    # -- the sweeper ------------------------------------------------------------------
    def _sweep(self) -> None:
        """Every timeout, the access log and the periodic report; it reschedules itself
        whatever happens."""
        try:
            self.expire(self.now())
        finally:
            self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def expire(self, now: float) -> None:
        """Act on every deadline passed at `now`; write the access log; report."""
        due = [c.on_timeout for c in self.clients if c.deadline <= now]
        due += [lambda: self.upstreams.expire(now), lambda: self._expire_queue(now), self.access_log.flush,
                self.report, lambda: self._check_all_closed(now)]
        if now >= self._rested_at + REST_AFTER_S:
            self._rested_at = now
            due.append(lambda: self._rest(now))
        for action in due:
            try:
                action()
            except Exception:  # a bug in one must not stop every other timeout
                log.exception("timeout handling failed")

    def _rest(self, now: float) -> None:
        """Keep-alive connections idle for REST_AFTER_S give their parser back (a thousand
        bytes each: 2.69 -> 1.6 KiB an idle connection, bench/idle_memory.py); their next
        request makes a new one."""
        for client in self.clients:
            client.rest(now - REST_AFTER_S)

    # -- shutdown ------------------------------------------------------------------------
    async def shutdown(self, timeout_s: float, grace_s: float = 0.0) -> None:
        """Stop accepting and finish what is here, as at a stop or an upgrade: connections
        accepted and not yet made (TLS handshakes in progress) are made; requests in flight
        complete; each keep-alive connection gets `Connection: close` on its next
        response; one idle for grace_s (drain.client_grace) is closed; at timeout_s
        (drain.timeout) tunnels end as at a node's drain deadline (a WebSocket gets close
        1001) and anything else still open is cut."""
        self.closing = True
        for server in self._servers:
            server.close()
        idle_until = self.now() + grace_s
        for client in list(self.clients):
            client.finish(idle_until)
        if not await self._until_all_closed(timeout_s):
            tunnels = [c for c in self.clients if c.in_tunnel]
            log.warning("shutdown: %d connections still open after %.1fs (%d tunnels); closing them",
                        len(self.clients), timeout_s, len(tunnels))
            for client in tunnels:
                self.failed["drain_deadline"] += 1
                self.tunnel_closed(client, client.tunnel_route)
                client.end_tunnel()
            for client in list(self.clients):
                if not client.in_tunnel and not client.lingering:
                    client.transport.abort()
            if tunnels:
                await self._until_all_closed(WEBSOCKET_CLOSE_WAIT_S)   # their closing handshakes
        for client in list(self.clients):
            client.transport.abort()
        self.upstreams.close_idle()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.report()
        self.access_log.flush()

    async def _until_all_closed(self, timeout_s: float) -> bool:
        if not self._nothing_to_finish(self.now()):
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout_s)
            except asyncio.TimeoutError:
                return False
        return True


def _networks(cidrs) -> tuple:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
