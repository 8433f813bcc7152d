"""One request and its response, from the parsed head to the last byte back.

An `Exchange` chooses a route (pinning, then the balancing policy), takes an
idle pooled upstream connection or opens one, forwards the head and streams
the body, then streams the response back through its client connection. The
decisions it makes on the way (how the response is framed, whether a failed
try goes again) are pure functions in lb/core/exchange.py. What it served is
counted on its `Route` (in flight, `StatsDelta`, passive-health outcomes),
which the data plane reports to the control plane.

Retries: a request is tried on another backend when connecting fails, or
when an upstream connection fails before any response byte and the request is
idempotent and its body is still held (`REPLAY_LIMIT_BYTES`). Once a response
byte has reached the client, a failure only ever closes the client connection:
no fake end of body.
"""

from __future__ import annotations

import time

from ..core import http1
from ..core.errors import HttpError
from ..core.exchange import (CHUNKED, CONNECT_FAILED, LOST_BEFORE_RESPONSE, NO_BODY, may_retry,
                             response_framing)
from ..core.http1 import LAST_CHUNK, REPLAY_LIMIT_BYTES, chunk
from ..core.pinning import KEPT
from ..core.seams import ExchangeClient
from ..core.skew import STORE, Decision
from ..files import read_copy
from .responses import pin_cookie_line
from .skew import SKEW_HOWS, StoredBody

INFINITY = float("inf")


class _Discard:
    """The sink of an upstream connection whose answer lb dropped (a 404 skew protection fell
    back from): what its parser still says goes nowhere."""

    switching = False
    response_bytes_seen = True

    def on_response(self, *_) -> None:
        pass

    on_response_body = on_response_end = upstream_lost = upstream_failed = upstream_timed_out = on_response


DISCARD = _Discard()


class Exchange:
    """One request and its response."""

    __slots__ = ("plane", "client", "head", "head_bytes", "route", "upstream", "tried",
                 "chunks", "held_bytes", "replayable", "request_done", "started", "status",
                 "body_mode", "bytes_out", "response_bytes_seen", "switching", "finished",
                 "keep_client", "upstream_keep", "version", "pin_cookie", "pin_how", "error",
                 "close_delimited", "queued_at", "gone", "capture", "stored", "secret_shown", "fallback")

    def __init__(self, plane, client: ExchangeClient, head: http1.RequestHead):
        self.plane = plane
        self.client = client
        self.head = head
        # skew.override_from's secret header: read, then never passed on to the app
        self.secret_shown = plane.skew_secrets and plane.skew.override.take_secret(head)
        self.head_bytes = http1.serialize_request(head, client.ip, (), client.trusted, own=client.own_headers(head))
        self.route = None
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
        self.close_delimited = False    # the backend's close ends the response body
        self.queued_at = 0.0            # when it began to wait for a capped backend (0: not waiting)
        self.bytes_out = 0
        self.response_bytes_seen = False
        self.switching = False
        self.finished = False
        self.keep_client = head.keep_alive
        self.version = None             # the code version this request is served by
        self.pin_cookie = None          # the cookie to set when the pin is new or moved (a PinCookie)
        self.pin_how = None             # kept / assigned / forward / backward
        self.error = None               # why lb answered or cut it itself (for the access log)
        self.gone = None                # a version the request named that is out of service (skew)
        self.capture = None             # the body being copied for the asset store (proxy/skew.py)
        self.stored = None              # the stored copy lb answers with itself (an Asset)
        self.fallback = None            # a known asset's versions, should its version answer 404

    # -- routing -------------------------------------------------------------
    def start(self, pick: bool = True) -> None:
        """Pick the version (unless `pick` is False: it is picked), a node of it, and a
        connection to that node."""
        plane = self.plane
        if self.client.redirect:
            self._redirect_https()
            return
        # the version is picked once (and again for a retry), not when leaving the queue
        if pick and plane.pinning is not None and (self.version is None or self.tried) and \
                not self._pick_version(plane.pinning):
            self.fail(HttpError("no backend available", 503))
            return
        if self.stored is not None:
            self._read_stored()
            return
        route = plane.table.choose(self.tried, self.version)
        if route is None:
            if plane.table.full(self.version):
                plane.enqueue(self)      # every backend it may use is at max_conns: wait
            else:
                self.fail(HttpError("no backend available", 503))
            return
        self.route = route
        self.tried.append(route)
        route.inflight += 1
        if route.heaps:
            route.requeue()
        conn = plane.upstreams.acquire(route)
        if conn is not None:
            self._attach(conn)
        else:
            plane.loop.create_task(self._connect(route))

    def _redirect_https(self) -> None:
        """A listener with `redirect_https`: every request is answered 308 to the same URL
        over https (the Host's name without its port), and never reaches a backend. A body
        is read and dropped before the connection goes on (end_body)."""
        head = self.head
        host = head.host
        if not host:
            self.fail(HttpError("a redirect to https needs a Host header", 400))
            return
        name = host[:host.find(b"]") + 1] if host.startswith(b"[") else host.partition(b":")[0]
        target = head.target
        if not target.startswith(b"/"):          # absolute-form: its path; '*' (OPTIONS): the root
            scheme, sep, rest = target.partition(b"://")
            target = b"/" + rest.partition(b"/")[2] if sep and b"/" in rest else b"/"
        self.finished = True
        self.status = 308
        self.keep_client = self.keep_client and not self.plane.closing
        self.client.write(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://%s%s\r\nContent-Length: 0\r\n%s\r\n"
                          % (name, target, b"" if self.keep_client else b"Connection: close\r\n"))
        self.plane.access_log.write(self, None)
        if self.request_done:
            self.client.exchange_done(self, self.keep_client)

    def _pick_version(self, pinning) -> bool:
        """Decide (first try) or revisit (a retry) the version; False when none is left. The
        skew rules come first (lb/core/skew.py); a version they pick leaves the cookie alone."""
        table = self.plane.table
        if not self.tried:
            pin = self.plane.skew.route(self, pinning, table)
            if pin.__class__ is Decision:
                decision = pin
                self.gone = decision.gone
                if decision.version is not None:
                    self.version, self.pin_how = decision.version, decision.how
                    return True
                pin, self.fallback = decision.pin, decision.fallback
            version, how = pinning.route(pin, table, self.plane.now())
        else:
            version, how = pinning.retry_version(self.version, table, self.tried)
            if self.pin_how in SKEW_HOWS and version is not None:
                self.version = version          # a tab's request, retried: still not its user's move
                return True
        if version is None:
            return False
        if how is not KEPT:
            self.pin_cookie = pinning.pin_cookie(version, self.client.tls is not None)
        self.version = version
        self.pin_how = how
        return True

    async def _connect(self, route) -> None:
        try:
            conn = await self.plane.upstreams.connect(route)
        except HttpError as exc:
            route.stats.errors += 1
            route.stats.connect_errors += 1
            self.plane.outcome(route, failed=True)
            self._retry_or_fail(CONNECT_FAILED, exc)
            return
        if self.finished or self.route is not route:
            self.plane.upstreams.release(conn, reusable=True)
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
        flow = self.client.flow
        if flow.paused:                      # nearly never: a body held while connecting
            flow.resume("buffer")

    def _retry_or_fail(self, failure: str, exc: HttpError) -> None:
        if may_retry(failure, len(self.tried), self.plane.config.retries, self.head.idempotent,
                     self.replayable, self.response_bytes_seen or self.status != 0,
                     not self.client.closed):
            if self.route is not None:
                self.route.stats.retries += 1
            self._leave_route()
            self.plane.retries += 1
            self.start()
        else:
            self.fail(exc)

    def _leave_route(self) -> None:
        route = self.route
        if route is not None:
            route.inflight -= 1
            if route.heaps:
                route.requeue()
            self.route = None
            if route.draining and route.idle:
                self.plane.report_soon()     # the control plane is waiting for this
            if self.plane.queue:
                self.plane.dequeue_soon()    # a slot may have freed for a waiting request
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
        elif upstream is None and self.finished and self.error is None and \
                (self.status == 308 and not self.tried or self.pin_how == STORE):
            self.client.exchange_done(self, self.keep_client)     # lb answered itself; the request ended

    # -- response from the upstream ------------------------------------------
    def on_response(self, head: http1.ResponseHead) -> None:
        status = head.status
        if status < 200:
            self._interim(head)
            return
        if status == 404 and self.fallback is not None and self._fall_back():
            return
        request = self.head
        self.body_mode, framing, self.keep_client = response_framing(
            request.method, request.version, status, head.content_length, self.keep_client,
            self.request_done, self.plane.closing)
        self.status = status
        self.upstream_keep = head.keep_alive
        self.close_delimited = self.body_mode != NO_BODY and head.content_length is None and not head.chunked
        if self.pin_cookie is not None:
            framing += pin_cookie_line(self.pin_cookie)
        if self.gone is not None:
            framing += b"X-Lb-Version-Gone: %s\r\n" % self.gone.encode()
        if status == 200 and (head.cache_control is not None or self.plane.skew_globs):
            self._learn(head)
        hsts = self.client.hsts_line
        if hsts:
            framing += hsts
        self.client.write(http1.serialize_response(status, head.reason, head.headers, framing))

    def _interim(self, head: http1.ResponseHead) -> None:
        if head.status == 101:
            if self.head.upgrade is None:
                raise HttpError("backend switched protocols without being asked", 502)
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
        if self.capture is not None:
            self._copy(data)

    # -- skew protection: learning assets, answering with a stored copy (proxy/skew.py) ------
    def _learn(self, head) -> None:
        """A 200: an asset to learn (and copy) when it says immutable or its path is one."""
        skew = self.plane.skew
        if skew is not None and self.stored is None and self.head.method == b"GET" and self.version is not None:
            self.capture = skew.consider(self, head)

    def _copy(self, data: bytes) -> None:
        if not self.capture.add(data):
            self._end_copy(whole=False)

    def _end_copy(self, whole: bool) -> None:
        capture, self.capture = self.capture, None
        self.plane.skew.captured(capture, whole)

    def _fall_back(self) -> bool:
        """A known asset got a 404 from its user's version: held back, the request goes to a
        version that has the asset, or lb answers with its copy (lb/core/skew.py fall_back).
        Nothing of the 404 reached the client; its connection goes (the body is not wanted)."""
        have, self.fallback = self.fallback, None
        decision = self.plane.skew.fall_back(have, self.version, self.plane.table, self.head.headers)
        if decision is None:
            return False
        upstream = self.upstream
        upstream.exchange = DISCARD           # what the parser still says of the 404 goes nowhere
        upstream.abort()
        self._leave_route()
        self.pin_cookie = None                # the asset's version is not its user's move
        self.version, self.pin_how, self.stored = decision.version, decision.how, decision.stored
        self.start(pick=False)
        return True

    def _read_stored(self) -> None:
        skew = self.plane.skew
        done = self.plane.loop.run_in_executor(skew.files(), read_copy, skew.dir, self.stored.digest)
        done.add_done_callback(self._answer_stored)

    def _answer_stored(self, done) -> None:
        """The copy was read (or not): answer with it, or route as if there were none."""
        body = None if done.cancelled() or done.exception() else done.result()
        if self.finished:
            return
        asset, self.stored = self.stored, None
        if body is None:                      # missing or corrupt: the version that said 404 again
            self.plane.skew.counts["store_missing", asset.version] += 1
            self.version, self.pin_how = self.tried[-1].version, None
            self.start(pick=False)
            return
        self.response_bytes_seen = True
        self.on_response(http1.ResponseHead(200, b"OK", b"1.1", list(asset.headers), len(body), False, True, None))
        self.upstream = StoredBody(self, body if self.body_mode != NO_BODY else b"")
        self.upstream.pump()

    def end_stored(self) -> None:
        """The stored copy went out whole (StoredBody)."""
        self.upstream = None
        self._end_own_answer()
        self.finished = True
        self.plane.access_log.write(self, None)
        if self.request_done:
            self.client.exchange_done(self, self.keep_client)

    def _end_own_answer(self) -> None:
        """The body of an answer lb made itself has gone out (HTTP/2 ends its stream here)."""

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
        upstream, route = self.upstream, self.route
        route.tunnels += 1
        self._done(reusable=None)
        upstream.exchange = None
        upstream.deadline = INFINITY
        self.client.start_tunnel(upstream, route)
        if upstream_leftover:
            self.client.write(upstream_leftover)

    # -- the end of an exchange -----------------------------------------------
    def _done(self, reusable: bool | None) -> None:
        """Count, log, and hand the upstream back (None: it becomes a tunnel)."""
        self.finished = True
        if self.capture is not None:
            self._end_copy(whole=True)
        route = self.route
        now = time.monotonic()
        route.stats.record(route.version, self.status, now - self.started, now)
        if self.status >= 500:
            route.stats.errors += 1
            self.plane.outcome(route, failed=True)
        elif route.fail_streak:
            self.plane.outcome(route, failed=False)
        if reusable is not None:
            self.plane.upstreams.release(self.upstream, reusable)
        self._leave_route()
        access_log = self.plane.access_log
        if access_log.on:
            access_log.write(self, route)

    def fail(self, exc: HttpError) -> None:
        """Answer with an error if nothing was sent yet; otherwise cut the client."""
        if self.finished:
            return
        self.finished = True
        if self.capture is not None:
            self._end_copy(whole=False)
        self.error = exc.message
        # After retries the request holds no route: the last one tried answers for it.
        route = self.route or (self.tried[-1] if self.tried else None)
        if self.upstream is not None:
            self.upstream.abort()
        self._leave_route()
        if route is not None:
            route.stats.lb_failures += 1
        if self.status == 0 and not self.client.closed:
            self.status = exc.status
            self.client.send_error(exc)
            self.plane.failed[str(exc.status)] += 1
        else:
            self.plane.failed["cut"] += 1       # the client connection is cut
        self.plane.access_log.write(self, route)
        self.client.exchange_done(self, keep_alive=False)

    def upstream_failed(self, conn, exc: HttpError) -> None:
        """The backend sent something unparseable."""
        if conn is self.upstream and not self.finished:
            if conn.route is not None:
                conn.route.stats.errors += 1
            self.fail(exc)

    def upstream_lost(self, conn) -> None:
        """The upstream connection closed under this exchange."""
        if conn is not self.upstream or self.finished:
            return
        if self.close_delimited:
            # The backend's close is this body's end (neither length nor chunks): end it for
            # the client too, with the last chunk when it was re-chunked.
            if self.body_mode == CHUNKED:
                self.client.write(LAST_CHUNK)
            self._done(reusable=False)
            self.client.exchange_done(self, self.keep_client and self.request_done)
            return
        if self.response_bytes_seen or self.status:
            self.fail(HttpError("backend closed the connection mid-response", 502))
            return
        # Nothing came back: safe to resend when idempotent and the body is still held.
        self.upstream = None
        self._retry_or_fail(LOST_BEFORE_RESPONSE,
                            HttpError("backend closed the connection before answering", 502))

    def upstream_timed_out(self, conn) -> None:
        if self.response_bytes_seen:
            self.fail(HttpError("backend stalled mid-response", 504))
        else:
            self.fail(HttpError("backend did not answer in time", 504))

    def client_gone(self) -> None:
        """The client went away: nothing of this exchange is worth finishing."""
        if self.finished:
            return
        self.finished = True
        if self.capture is not None:
            self._end_copy(whole=False)
        if self.upstream is not None:
            self.upstream.abort()
        route = self.route
        self._leave_route()
        self.plane.access_log.write(self, route)
