"""Prometheus: a collector that reads lb's counters at scrape time, so the hot path
never touches a prometheus-client object; and its own listener (never the public port).
The counters are the control plane's, brought up to date (`Control.sync`) first.
"""

from __future__ import annotations

import asyncio
import json
import time
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..core.values import format_hostport
from ..core.nodes import ADMIN_STATES, Health
from ..core.stats import CLASSES, HISTOGRAM_BOUNDS_S
from .status import MAX_FORM_BYTES, StatusPage

DRAIN_BOUNDS_S = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
MAX_CLIENTS = 64          # connections at once on the metrics listener; more get a 503 and are closed


class LbCollector:
    """Every lb metric, built from the control plane's state when scraped."""

    def __init__(self, control):
        self.control = control

    def collect(self):
        control = self.control
        backends = list(control.pool.backends.values())
        requests = CounterMetricFamily("lb_requests", "Requests answered by a backend",
                                       labels=["backend", "version", "code_class"])
        duration = HistogramMetricFamily("lb_request_duration_seconds",
                                         "Time from request head to last response byte",
                                         labels=["backend"])
        connect = CounterMetricFamily("lb_upstream_connect_errors", "Failed connects to a backend",
                                      labels=["backend"])
        inflight = GaugeMetricFamily("lb_inflight_requests", "Requests in flight", labels=["backend"])
        tunnels = GaugeMetricFamily("lb_tunnels", "Open upgraded connections", labels=["backend"])
        state = GaugeMetricFamily("lb_backend_state", "Admin state (1 = current)",
                                  labels=["backend", "state"])
        health_g = GaugeMetricFamily("lb_backend_health", "Health (1 = current)",
                                     labels=["backend", "health"])
        weight = GaugeMetricFamily("lb_backend_weight", "Effective weight", labels=["backend"])
        for b in backends:
            # every class of a version the node served, zeros too: a query for a share of 5xx
            # then answers 0 for a good version, not "no data" (a deploy gate would be inconclusive)
            for version, counts in sorted(b.stats.by_class.items()):
                for cls, count in zip(CLASSES, counts):
                    requests.add_metric([b.name, version, cls], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*HISTOGRAM_BOUNDS_S, float("inf")), b.stats.histogram):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            duration.add_metric([b.name], buckets, b.stats.histogram_sum)
            connect.add_metric([b.name], b.stats.connect_errors)
            inflight.add_metric([b.name], b.inflight)
            tunnels.add_metric([b.name], b.tunnels)
            for s in ADMIN_STATES:
                state.add_metric([b.name, str(s)], 1 if b.admin_state == s else 0)
            for h in Health:
                health_g.add_metric([b.name, str(h)], 1 if b.health == h else 0)
            weight.add_metric([b.name], b.effective_weight)
        yield from (requests, duration, connect, inflight, tunnels, state, health_g, weight)
        expiry = GaugeMetricFamily("lb_tls_cert_expiry_seconds", "Seconds until a served certificate expires",
                                   labels=["listener", "cert"])
        now = time.time()
        for i, infos in sorted(control.certs.items()):
            for info in infos:
                expiry.add_metric([format_hostport(*control.config.listen[i].address), info.path],
                                  round(info.not_after - now, 3))
        yield expiry
        retries = CounterMetricFamily("lb_retries", "Requests retried on another backend")
        retries.add_metric([], control.stats.retries)
        failed = CounterMetricFamily("lb_failed_requests",
                                     "Responses lb made itself, and client connections it cut",
                                     labels=["reason"])
        for reason, count in sorted(control.stats.failed.items()):
            failed.add_metric([reason], count)
        capacity = GaugeMetricFamily("lb_version_capacity", "Ready capacity", labels=["version"])
        for version, cap in control.pool.version_capacity().items():
            capacity.add_metric([version], cap)
        clients = GaugeMetricFamily("lb_client_connections", "Open client connections")
        clients.add_metric([], control.clients)
        queued = GaugeMetricFamily("lb_queued_requests", "Requests waiting for a backend at max_conns")
        queued.add_metric([], control.queued)
        panic = GaugeMetricFamily("lb_panic", "1 while no node passes its health checks and lb routes to "
                                  "the failing ones (health.panic)")
        panic.add_metric([], int(control.pool.panic))
        panics = CounterMetricFamily("lb_panics", "Times lb entered panic")
        panics.add_metric([], control.panics)
        yield from (panic, panics)
        drains = CounterMetricFamily("lb_drains", "Drains started")
        drains.add_metric([], control.stats.drains)
        drain_time = HistogramMetricFamily("lb_drain_duration_seconds",
                                           "From drain to drained (or to the deadline)")
        durations = control.stats.drain_durations
        drain_time.add_metric([], [("+Inf" if b == float("inf") else repr(b),
                                    sum(1 for d in durations if d <= b))
                                   for b in (*DRAIN_BOUNDS_S, float("inf"))], sum(durations))
        restarts = CounterMetricFamily("lb_worker_restarts", "Worker processes started again after exiting")
        restarts.add_metric([], control.link.restarts)
        workers = GaugeMetricFamily("lb_workers", "Worker processes serving")
        workers.add_metric([], len(control.link.info()))
        upgrades = CounterMetricFamily("lb_upgrades", "Hitless upgrades of lb itself (each master hands "
                                       "the count on)")
        upgrades.add_metric([], control.upgrades)
        yield from (retries, failed, capacity, clients, queued, drains, drain_time, restarts, workers, upgrades)
        if control.cluster is not None:
            connected = GaugeMetricFamily("lb_cluster_connected", "1 while etcd answers this lb (cluster mode); "
                                          "lb serves on either way", labels=["cluster"])
            connected.add_metric([control.cluster.config.name], int(control.cluster.connected))
            applied = GaugeMetricFamily("lb_cluster_applied_revision", "The etcd revision of the fleet's desired "
                                        "state this lb applied (cluster mode; 0: none yet)", labels=["cluster"])
            applied.add_metric([control.cluster.config.name], control.desired.revision)
            yield from (connected, applied)
        if control.pinning_on:
            assigned = CounterMetricFamily("lb_pin_assignments", "Clients assigned a version",
                                           labels=["version"])
            for version, count in sorted(control.pins["assignments"].items()):
                assigned.add_metric([version], count)
            moved = CounterMetricFamily("lb_pin_migrations", "Clients moved to another version",
                                        labels=["from", "to", "direction"])
            for (src, dst, direction), count in sorted(control.pins["migrations"].items()):
                moved.add_metric([src, dst, direction], count)
            yield from (assigned, moved)
            yield from skew_metrics(control.assets)


def skew_metrics(assets):
    """lb_skew_*: requests routed by each skew rule, gone versions named, the index and store."""
    routed = CounterMetricFamily("lb_skew_requests", "Requests whose version a skew rule chose "
                                 "(how: header, query, override, asset, store)", labels=["how", "version"])
    gone = CounterMetricFamily("lb_skew_gone", "Requests naming a version out of service", labels=["version"])
    missing = CounterMetricFamily("lb_skew_store_missing", "Stored copies missing or corrupt when asked for",
                                  labels=["version"])
    families = {"gone": gone, "store_missing": missing}
    for (how, version), count in sorted(assets.counts.items()):
        family = families.get(how)
        if family is not None:
            family.add_metric([version], count)
        else:
            routed.add_metric([how, version], count)
    entries = GaugeMetricFamily("lb_skew_assets", "Asset paths learned (path, version entries)")
    entries.add_metric([], len(assets.index.entries))
    stored = GaugeMetricFamily("lb_skew_store_bytes", "Bytes of asset copies on disk")
    stored.add_metric([], assets.index.stored_bytes)
    full = GaugeMetricFamily("lb_skew_store_full", "1 while new copies are refused for room")
    full.add_metric([], int(assets.index.full))
    yield from (routed, gone, missing, entries, stored, full)


# the status page's paths -> (its file in lb/data, or None for the page itself; content type)
PAGE_FILES = {"/status": (None, "text/html; charset=utf-8"), "/status.js": ("status.js", "text/javascript"),
              "/status.css": ("status.css", "text/css")}
# the page runs only its own files, in no frame of another site
PAGE_HEADERS = ("Content-Security-Policy: default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                "form-action 'self'\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n")


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, path without its query, headers by lower-case name) of a request head."""
    lines = head.decode("latin-1").split("\r\n")
    request = lines[0].split()
    headers = {}
    for text in lines[1:]:
        name, colon, value = text.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    if len(request) < 2:
        return "", "", headers
    return request[0], request[1].split("?", 1)[0], headers


class MetricsServer:
    """GET /metrics on metrics.listen (never the public port), and with `status.enabled` GET
    /status and /status.json (lb/control/status.py); anything else is 404."""

    def __init__(self, control, sock, admin=None):
        """`admin`: the admin socket's handlers, for the status page's actions (status.actions)."""
        self.control = control
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LbCollector(control))
        self.sock = sock                  # bound by the master (handed to a new one at an upgrade)
        self.status = StatusPage(control, admin) if control.config.status.enabled else None
        self._server = None
        self._open = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self.sock, limit=8192)
        if self.status is not None:
            self.status.start()

    def _answer(self, path: str) -> tuple[bytes, int, str]:
        """(body, status, content type) for a GET of `path` (its query left out)."""
        status = self.status
        if path == "/metrics":
            return generate_latest(self.registry), 200, CONTENT_TYPE_LATEST
        if status is not None and path in PAGE_FILES:
            name, ctype = PAGE_FILES[path]
            return (status.html() if name is None else status.files[name]), 200, ctype
        if status is not None and path == "/status.json":
            return json.dumps(status.snapshot()).encode(), 200, "application/json"
        offer = "/metrics or /status" if status is not None else "/metrics"
        return f"not found: try {offer}\n".encode(), 404, "text/plain"

    async def _serve(self, reader, writer) -> None:
        if self._open >= MAX_CLIENTS:            # scrapers and pages are few: a flood gets no memory
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        self._open += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, headers = parse_head(head)
            extra = ""
            if path.startswith("/status") and self.status is not None and not self.status.authorized(headers):
                body, code, ctype = b"authentication required\n", 401, "text/plain"
                extra = 'WWW-Authenticate: Basic realm="lb status", charset="UTF-8"\r\n'
            elif method == "GET":
                await self.control.synced()
                body, code, ctype = self._answer(path)
            elif method == "POST" and path == "/status/action" and self.status is not None:
                body, code, ctype, extra = await self._act(reader, writer, headers)
            else:
                body, code, ctype = b"not found: try GET /metrics\n", 404, "text/plain"
            if ctype.startswith("text/html"):
                extra += PAGE_HEADERS
            writer.write(f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff"
                         f"\r\n{extra}Connection: close\r\n\r\n".encode("latin-1") + body)
            await asyncio.wait_for(writer.drain(), 10)        # a reader that stops reading is let go
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError):
            pass
        finally:
            self._open -= 1
            writer.close()

    async def _act(self, reader, writer, headers: dict[str, str]) -> tuple[bytes, int, str, str]:
        """A POST /status/action: its form read (bounded) and run; JSON for the page's script, a
        303 back to the page for a browser without it."""
        length = headers.get("content-length", "")
        if not (length.isascii() and length.isdigit()) or int(length) > MAX_FORM_BYTES:
            return f"expected a form of at most {MAX_FORM_BYTES} bytes\n".encode(), 413, "text/plain", ""
        form = await asyncio.wait_for(reader.readexactly(int(length)), 10)
        peer = writer.get_extra_info("peername")
        code, reply = await self.status.act(headers, form, format_hostport(*peer[:2]) if peer else "?")
        if "application/json" in headers.get("accept", "") or code != 200:
            return json.dumps(reply).encode(), code, "application/json", ""
        return b"", 303, "text/plain", "Location: /status\r\n"

    async def close(self) -> None:
        if self.status is not None:
            self.status.stop()
        if self._server is not None:
            self._server.close()
