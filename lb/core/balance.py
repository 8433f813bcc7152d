"""Choosing a backend for a request, from the routing view. No I/O.

Theory of operation
-------------------
The control plane publishes a `RoutingView` (planes.py). The data plane
keeps a `RoutingTable` of `Route`s built from the latest view. A Route adds
what only the data plane knows: the requests in flight and the tunnels open
on that node *in this process*, and what it served since its last report. The table caches the routes
that take traffic, grouped by version, and rebuilds that cache only when a
new view is applied, so the hot path never filters the whole pool.

Balancing policies are a name table (`POLICIES`); each is an object with
`choose(candidates) -> Route`. Every policy honours the effective weight:
- least_conn: the lowest (in-flight + 1) / weight, equal ones in turn; a group of
  HEAP_FROM routes or more keeps them in a `LoadHeap`, updated as each request starts and
  ends (HAProxy keeps a tree), so that choosing costs the same with 200 nodes as with 10;
- round_robin: smooth weighted round robin (each route gains its weight,
  the leader is picked and pays back the total);
- random_two: two candidates drawn by weight, the less loaded one wins.
"""

from __future__ import annotations

import random
from heapq import heapify, heappop, heappush

from .planes import Endpoint, NodeView, RoutingView
from .stats import StatsDelta


class Route(Endpoint):
    """One node as the data plane sees it."""

    __slots__ = ("name", "host", "port", "version", "effective_weight", "takes_traffic",
                 "draining", "inflight", "tunnels", "rr_current", "removed",
                 "stats", "outcomes", "fail_streak", "cut", "max_conns", "reachable", "heaps")

    def __init__(self, view: NodeView):
        self.inflight = 0
        self.tunnels = 0
        self.rr_current = 0.0
        self.removed = False
        self.stats = StatsDelta()           # since the last report
        self.outcomes: list[list] = []      # passive outcomes since the last report (planes.py)
        self.fail_streak = 0                # failures in a row, here (0: the last one succeeded)
        self.cut: int | None = None         # closed by a `cut` since the last report
        self.heaps: tuple = ()              # the LoadHeaps it is in (least_conn, large groups)
        self.update(view)

    def requeue(self) -> None:
        """Its in-flight count changed: its place in the LoadHeaps it is in (a caller with a
        large pool only: `if route.heaps: route.requeue()`)."""
        for heap in self.heaps:
            heap.push(self)

    def update(self, view: NodeView) -> None:
        self.name = view.name
        self.host, self.port = view.host, view.port
        self.version = view.version
        self.effective_weight = view.effective_weight
        self.takes_traffic = view.takes_traffic
        self.draining = view.draining
        self.max_conns = view.max_conns
        self.reachable = view.reachable


def _inflight(route: Route) -> int:
    return route.inflight


HEAP_FROM = 16


class LoadHeap:
    """One group's routes by load, least first: least_conn without a scan. Every start and end
    of a request pushes the route again with its new load; an entry whose in-flight count is
    no longer the route's is stale and skipped. Equal loads come out in the order they went
    in, so equal routes take turns. Rebuilt when stale entries pass 3 per route."""

    __slots__ = ("heap", "seq", "limit")

    def __init__(self, routes: list[Route]):
        self.seq = 0
        self.limit = 4 * len(routes) + 16
        self.heap = [self._entry(route) for route in routes]
        heapify(self.heap)

    def _entry(self, route: Route) -> tuple:
        self.seq += 1
        return ((route.inflight + 1) / route.effective_weight, self.seq, route.inflight, route)

    def push(self, route: Route) -> None:
        heap = self.heap
        heappush(heap, self._entry(route))
        if len(heap) > self.limit:
            fresh = {}
            for entry in heap:
                if entry[2] == entry[3].inflight:
                    fresh[entry[3]] = entry
            self.heap = list(fresh.values())
            heapify(self.heap)

    def top(self) -> Route | None:
        heap = self.heap
        while heap:
            entry = heap[0]
            if entry[2] == entry[3].inflight:
                # taken now: it goes behind the others of its load until its count changes
                heappop(heap)
                heappush(heap, self._entry(entry[3]))
                return entry[3]
            heappop(heap)
        return None


class LeastConn:
    def __init__(self):
        self._turn = 0

    def choose(self, candidates: list[Route]) -> Route:
        # Ties take turns among themselves. ("The first lowest after a rotating start"
        # would hand the turns of a node that cannot win, e.g. one in slow start, to
        # whichever node follows it: 297/181/122 req/s on three equal nodes.)
        ties, best_load = None, None
        for route in candidates:
            load = (route.inflight + 1) / route.effective_weight
            if ties is None or load < best_load:
                ties, best_load = [route], load
            elif load == best_load:
                ties.append(route)
        self._turn += 1
        return ties[self._turn % len(ties)]


class RoundRobin:
    def choose(self, candidates: list[Route]) -> Route:
        total = 0.0
        best = None
        for route in candidates:
            route.rr_current += route.effective_weight
            total += route.effective_weight
            if best is None or route.rr_current > best.rr_current:
                best = route
        best.rr_current -= total
        return best


class RandomTwo:
    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()

    def choose(self, candidates: list[Route]) -> Route:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.choices(candidates, weights=[r.effective_weight for r in candidates],
                                          k=2)
        if first.inflight * second.effective_weight <= second.inflight * first.effective_weight:
            return first
        return second


POLICIES = {"least_conn": LeastConn, "round_robin": RoundRobin, "random_two": RandomTwo}


class RoutingTable:
    """The routes of the latest view, and the choice of one for a request."""

    def __init__(self, policy: str, view: RoutingView | None = None):
        self.routes: dict[str, Route] = {}
        self.policy = POLICIES[policy]()
        self.versions: tuple[str, ...] = ()
        self.generation = -1
        self._eligible: list[Route] = []
        self._by_version: dict[str, list[Route]] = {}
        self._capacity: dict[str, float] = {}
        self._capped = False             # some route has max_conns: choose() skips full ones
        self._weightless: dict[str, list[Route]] = {}    # versions nobody is sent to but an override
        self._heaps: dict = {}           # group (None: all, or a version) -> LoadHeap, large groups
        self._weightless_versions: frozenset = frozenset()
        if view is not None:
            self.apply(view)

    def apply(self, view: RoutingView) -> list[Route]:
        """Take a new view. Returns the routes that stopped taking traffic, moved to
        another address or left the view (their idle connections should close)."""
        changed = []
        routes = {}
        for node in view.nodes:
            route = self.routes.get(node.name)
            if route is None:
                route = Route(node)
            else:
                if route.takes_traffic and not node.takes_traffic or \
                        (route.host, route.port) != (node.host, node.port):
                    changed.append(route)
                route.update(node)
            routes[node.name] = route
        for name, route in self.routes.items():
            if name not in routes:
                route.removed = True
                route.takes_traffic = False
                route.heaps = ()
                changed.append(route)
        self.routes = routes
        self.versions = view.versions
        self.generation = view.generation
        self._rebuild()
        return changed

    def _rebuild(self) -> None:
        self._eligible = [r for r in self.routes.values() if r.takes_traffic]
        groups: dict[str, list[Route]] = {}
        for route in self._eligible:
            groups.setdefault(route.version, []).append(route)
        self._by_version = groups
        self._capacity = {v: sum(r.effective_weight for r in routes) for v, routes in groups.items()}
        self._capped = any(r.max_conns for r in self._eligible)
        weightless: dict[str, list[Route]] = {}
        for route in self.routes.values():
            if route.reachable and route.version not in groups:
                weightless.setdefault(route.version, []).append(route)
        self._weightless = weightless
        self._weightless_versions = frozenset(weightless)
        self._build_heaps()

    def _build_heaps(self) -> None:
        heaps = {}
        if isinstance(self.policy, LeastConn):
            for key, routes in ((None, self._eligible), *self._by_version.items()):
                if len(routes) >= HEAP_FROM:
                    # one version takes all the traffic (between deploys): its group is
                    # everyone's, one heap serves both and each start and end pushes once
                    heaps[key] = heaps[None] if key is not None and len(routes) == len(self._eligible) \
                        else LoadHeap(routes)
        for route in self.routes.values():
            route.heaps = ()
        for heap in {id(h): h for h in heaps.values()}.values():
            for entry in heap.heap:
                entry[3].heaps += (heap,)
        self._heaps = heaps

    def set_policy(self, name: str) -> None:
        self.policy = POLICIES[name]()
        self._build_heaps()

    def weightless(self) -> frozenset:
        """The versions whose ready, up nodes all stand at weight 0 (skew.py: reached only by
        a request that may override)."""
        return self._weightless_versions

    def by_version(self) -> dict[str, list[Route]]:
        """The routes taking traffic, of each version that has any."""
        return self._by_version

    def version_capacity(self) -> dict[str, float]:
        """Ready capacity per version: the summed effective weights of routes taking traffic."""
        return self._capacity

    def full(self, version: str | None = None) -> bool:
        """Whether routes would take the request but every one is at its max_conns (the
        request should wait in the queue rather than be refused)."""
        candidates = self._eligible if version is None else self._by_version.get(version, [])
        return bool(candidates) and self._capped and \
            all(r.max_conns and r.inflight >= r.max_conns for r in candidates)

    def eligible(self) -> list[Route]:
        return self._eligible

    def choose(self, exclude: list | tuple = (), version: str | None = None) -> Route | None:
        """A route for a new request (of `version`, when given), or None.

        `exclude` (the routes already tried for this request) is avoided
        while any other candidate is eligible.
        """
        if self._heaps and not exclude and not self._capped:
            heap = self._heaps.get(version)
            if heap is not None:
                return heap.top()
        candidates = self._eligible if version is None else self._by_version.get(version, [])
        if not candidates and version in self._weightless:
            others = [r for r in self._weightless[version] if r not in exclude]
            return min(others or self._weightless[version], key=_inflight)     # no weight to share by
        if self._capped:
            candidates = [r for r in candidates if not r.max_conns or r.inflight < r.max_conns]
        if exclude:
            others = [r for r in candidates if r not in exclude]
            candidates = others or candidates
        if not candidates:
            return None
        return self.policy.choose(candidates)
