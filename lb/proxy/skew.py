"""Skew protection in a data plane: the rules of lb/core/skew.py applied to requests, assets
learned from responses, and the store of their copies on disk.

Theory of operation
-------------------
`SkewPlane.route` runs before pinning for each request that a version can be picked for: it
reads the version header and the pin cookie in one pass over the headers, the version query
parameter only when the target has a query, and looks the path up in its `AssetMap` only
when the map has entries; a request with none of these (nearly every one outside a deploy)
costs one pass and no decision.

Learning: a 200 to a GET that says `Cache-Control: immutable`, or whose path matches
`skew.assets`, is an asset of the version that answered. When this data plane does not know
it yet, its body is copied as it passes (up to `skew.max_asset_bytes`, and at most
`CAPTURE_MAX_BYTES` for all responses being copied at once) and, once whole, written to the
store in a thread: content-addressed (the file's name is its sha256), through a temporary
file and a rename, so a reader never sees half a file. The entry goes into this data plane's
map at once and to the control plane in the next report; the control plane keeps the one
index for all, bounds it (deleting the files no entry uses), and sends every data plane what
changed.

Serving a copy (`read_copy`): the file is read in a thread and its sha256 checked; a file
that is missing or does not match is not served (it is deleted when corrupt) and the request
goes to the versions in service as if no copy existed.
"""

from __future__ import annotations

import time
from collections import Counter

from ..core.skew import (ASSET, HEADER, OVERRIDE, QUERY, STORE, Asset, AssetMap, Decision, Override, View,
                         asset_key, asset_path, decide, encoding_accepted, fall_back, glob_matcher, is_immutable, label,
                         may_copy, query_value)
from ..files import store_dir, write_copy

CAPTURE_MAX_BYTES = 64 << 20        # response bytes one data plane copies at once, all assets together
SKIPPED_HEADERS = frozenset((b"set-cookie", b"date", b"age", b"x-lb-version-gone"))
SKEW_HOWS = frozenset((HEADER, QUERY, OVERRIDE, ASSET, STORE))     # the cookie is left as it is


class Capture:
    """An asset's body being copied as it goes to the client."""

    __slots__ = ("path", "version", "headers", "parts", "size", "limit", "reserved")

    def __init__(self, path: bytes, version: str, headers: tuple, limit: int, reserved: int):
        self.path, self.version, self.headers = path, version, headers
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.reserved = reserved             # of CAPTURE_MAX_BYTES, until the copy is written or dropped

    def add(self, data: bytes) -> bool:
        """Keep `data`; False once the body passes its limit (the copy is abandoned)."""
        self.size += len(data)
        if self.size > self.limit:
            self.parts = []
            return False
        self.parts.append(data)
        return True


class StoredBody:
    """A stored copy going out as a backend's body would: as fast as the client takes it. It
    stands as the exchange's upstream, so the clients' backpressure paces it as it paces a
    backend (HTTP/1.1's pause_writing, an HTTP/2 stream's outbox past STREAM_WRITE_HIGH call
    pause_reading; resume_reading when drained). Written whole, one client reading nothing
    held a copy per pipelined request in the worker (31 MB for 30 requests of a 1 MiB copy)."""

    __slots__ = ("exchange", "body", "at", "paused", "done")
    deadline = float("inf")
    PIECE = 64 * 1024

    def __init__(self, exchange, body: bytes):
        self.exchange, self.body, self.at = exchange, body, 0
        self.paused = exchange.client.write_paused
        self.done = False

    def pump(self) -> None:
        exchange, body = self.exchange, self.body
        while not self.paused and self.at < len(body) and not self.done:
            piece = body[self.at:self.at + self.PIECE]
            self.at += len(piece)
            exchange.on_response_body(piece)
        if self.at >= len(body) and not self.done:
            self.done = True
            exchange.end_stored()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            self.pump()

    def abort(self) -> None:
        self.done = True
        self.body = b""

    close = abort

    def write(self, data: bytes) -> None:
        """A request body's bytes: nobody to send them to."""


class SkewPlane:
    """One data plane's side of skew protection."""

    def __init__(self, config, loop):
        self.loop = loop
        self.assets = AssetMap()
        self.counts: Counter = Counter()     # (what, version) -> requests, for the next report
        self.learned: list[Asset] = []       # entries for the next report
        self.capturing: set = set()          # (path, version) being copied now
        self.captured_bytes = 0
        self.configure(config)

    def configure(self, config) -> None:
        pin, skew = config.pinning, config.skew
        self.header = pin.header.lower().encode()
        self.hlen = len(self.header)
        self.query = pin.query.encode()
        self.is_asset_path = glob_matcher(skew.assets)
        self.globs = bool(skew.assets)
        self.override = Override(skew.override_from)
        self.retention = skew.retention
        self.max_asset_bytes = skew.max_asset_bytes
        self.learning = skew.max_assets > 0
        self.dir = store_dir(config) if skew.store_bytes > 0 else None
        self.secrets = bool(self.override.secrets)

    def apply(self, update) -> None:
        self.assets.apply(update)

    def take(self) -> tuple[list[Asset], Counter]:
        learned, counts = self.learned, self.counts
        self.learned, self.counts = [], Counter()
        return learned, counts

    # -- routing -------------------------------------------------------------------------
    def route(self, exchange, pinning, table) -> str | None | Decision:
        """A request's first try: its cookie's pin (a version or None) when no skew rule applies
        (nearly every request: no tuple is made), else the Decision (with the pin in it)."""
        head = exchange.head
        named = pin = None
        hlen = self.hlen
        for name, value in head.headers:
            size = len(name)
            if size == 6:
                if pin is None and name.lower() == b"cookie":
                    pin = pinning.pin_in(value, table.versions)
            elif size == hlen and named is None and name.lower() == self.header:
                named = ((label(value), HEADER),)
        target = head.target
        if b"?" in target:
            value = query_value(target, self.query)
            if value is not None:
                named = (named or ()) + ((label(value), QUERY),)
        path = None
        by_path = self.assets.by_path
        if by_path and (head.method == b"GET" or head.method == b"HEAD"):
            path = asset_key(target, self.query)
            if path not in by_path:
                path = None
            elif named is None:
                named = ()
        if named is None:
            return pin
        decision = decide(named, path, pin, lambda: self._may_override(exchange), self._view(table), self.assets)
        if decision.how is not None:
            self.counts[decision.how, decision.version] += 1
        if decision.gone is not None:
            self.counts["gone", decision.gone] += 1
        return decision

    def _view(self, table) -> View:
        known = table.versions
        retired = [v for v in self.assets.retired if v not in known]
        if retired:                           # versions no node has any more (after a restart)
            known = (*sorted(retired, key=self.assets.retired.get), *known)
        return View(table.version_capacity(), table.weightless(), known)

    def fall_back(self, have: dict, answered: str, table, request_headers=()) -> Decision | None:
        """Where a known asset's request goes after a 404 from `answered` (lb/core/skew.py)."""
        decision = fall_back(have, answered, self._view(table), self.assets.retired, time.time(), self.retention)
        if decision is not None and decision.how is STORE and \
                not encoding_accepted(decision.stored.headers, request_headers):
            decision = None                   # a copy in an encoding the request does not take
        if decision is not None:
            self.counts[decision.how, decision.version] += 1
        return decision

    def _may_override(self, exchange) -> bool:
        return exchange.secret_shown or self.override.peer_allowed(exchange.client.ip.decode("latin-1"))

    # -- learning ------------------------------------------------------------------------
    def consider(self, exchange, head) -> Capture | None:
        """A 200 to a GET of `exchange.version`: learn it when it is an asset; returns a Capture
        when its body should be copied."""
        if not self.learning:
            return None
        target = exchange.head.target
        if not (is_immutable(head.cache_control) or self.globs and self.is_asset_path(asset_path(target))):
            return None
        path = asset_key(target, self.query)
        version = exchange.version
        copying = self.dir is not None and not self.assets.store_full and \
            may_copy(head.headers, exchange.head.headers)
        if self.assets.knows(path, version, stored=copying) or (path, version) in self.capturing:
            return None
        length = head.content_length
        if not copying or length is None and not head.chunked or (length or 0) > self.max_asset_bytes \
                or self.captured_bytes + (length or self.max_asset_bytes) > CAPTURE_MAX_BYTES:
            if not self.assets.knows(path, version, stored=False):
                self._learned(Asset(path, version))
            return None
        headers = tuple((n, v) for n, v in head.headers if n.lower() not in SKIPPED_HEADERS)
        reserved = length or self.max_asset_bytes
        self.capturing.add((path, version))
        self.captured_bytes += reserved
        return Capture(path, version, headers, min(self.max_asset_bytes, reserved), reserved)

    def captured(self, capture: Capture, whole: bool) -> None:
        """The response ended (whole, or cut): write the copy, or give up on it."""
        key = (capture.path, capture.version)
        self.captured_bytes -= capture.reserved
        if not whole or capture.size > capture.limit:
            self.capturing.discard(key)
            return
        body = b"".join(capture.parts)
        capture.parts = []
        future = self.loop.run_in_executor(None, write_copy, self.dir, body)
        future.add_done_callback(lambda done: self._written(capture, len(body), done))

    def _written(self, capture: Capture, size: int, done) -> None:
        self.capturing.discard((capture.path, capture.version))
        digest = None if done.cancelled() or done.exception() else done.result()
        self._learned(Asset(capture.path, capture.version, digest, size if digest else 0,
                            capture.headers if digest else ()))

    def _learned(self, asset: Asset) -> None:
        self.assets.apply_one(asset)
        self.learned.append(asset)
