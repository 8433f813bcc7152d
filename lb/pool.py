"""Backends, their states and counters, and choosing one for a request. No I/O.

Theory of operation
-------------------
A `Backend` carries two independent axes: the admin state an operator sets
(ready / draining / drained / maint) and the health the checks set (up / down /
ejected). A backend takes new requests only when it is `ready` and `up` with a
weight above zero; that set is cached in `Pool.eligible()` and rebuilt when
`Pool.changed()` is called after any state or weight change, so the hot path
never filters the whole pool.

Balancing policies are a name table (`POLICIES`); each is an object with
`choose(candidates) -> Backend`. Every policy honours weight:
- least_conn: the lowest (in-flight + 1) / weight, ties broken by rotation;
- round_robin: smooth weighted round robin (each backend gains its weight,
  the leader is picked and pays back the total);
- random_two: two candidates drawn by weight, the less loaded one wins.
"""

from __future__ import annotations

import random
from typing import Iterable

from .config import BackendConfig

READY, DRAINING, DRAINED, MAINT = "ready", "draining", "drained", "maint"
UP, DOWN, EJECTED = "up", "down", "ejected"


class Backend:
    """One backend server and its runtime counters."""

    __slots__ = ("name", "host", "port", "version", "weight", "admin_state", "health",
                 "inflight", "tunnels", "requests", "errors", "rr_current")

    def __init__(self, config: BackendConfig):
        self.name = config.name
        self.host, self.port = config.address
        self.version = config.version
        self.weight = config.weight
        self.admin_state = READY
        self.health = UP
        self.inflight = 0
        self.tunnels = 0
        self.requests = 0
        self.errors = 0
        self.rr_current = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def takes_traffic(self) -> bool:
        return self.admin_state == READY and self.health == UP and self.weight > 0

    def describe(self) -> dict:
        return {"name": self.name, "address": self.address, "version": self.version,
                "weight": self.weight, "state": self.admin_state, "health": self.health,
                "inflight": self.inflight, "tunnels": self.tunnels,
                "requests": self.requests, "errors": self.errors}


class LeastConn:
    def __init__(self):
        self._turn = 0

    def choose(self, candidates: list[Backend]) -> Backend:
        count = len(candidates)
        self._turn = start = (self._turn + 1) % count
        best = candidates[start]
        best_load = (best.inflight + 1) / best.weight
        for i in range(1, count):
            backend = candidates[(start + i) % count]
            load = (backend.inflight + 1) / backend.weight
            if load < best_load:
                best, best_load = backend, load
        return best


class RoundRobin:
    def choose(self, candidates: list[Backend]) -> Backend:
        total = 0
        best = None
        for backend in candidates:
            backend.rr_current += backend.weight
            total += backend.weight
            if best is None or backend.rr_current > best.rr_current:
                best = backend
        best.rr_current -= total
        return best


class RandomTwo:
    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()

    def choose(self, candidates: list[Backend]) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.choices(candidates, weights=[b.weight for b in candidates], k=2)
        if first.inflight * second.weight <= second.inflight * first.weight:
            return first
        return second


POLICIES = {"least_conn": LeastConn, "round_robin": RoundRobin, "random_two": RandomTwo}


class Pool:
    """The backends in config order, and the choice of one for a request."""

    def __init__(self, configs: Iterable[BackendConfig], policy: str):
        self.backends: dict[str, Backend] = {c.name: Backend(c) for c in configs}
        self.policy = POLICIES[policy]()
        self._eligible: list[Backend] | None = None

    def changed(self) -> None:
        """Call after any change of state, health or weight."""
        self._eligible = None

    def eligible(self) -> list[Backend]:
        if self._eligible is None:
            self._eligible = [b for b in self.backends.values() if b.takes_traffic]
        return self._eligible

    def choose(self, exclude: Backend | tuple = ()) -> Backend | None:
        """A backend for a new request, or None when none can take it.

        `exclude` (the backends already tried for this request) is avoided
        while any other backend is eligible.
        """
        candidates = self.eligible()
        if exclude:
            others = [b for b in candidates if b not in exclude]
            candidates = others or candidates
        if not candidates:
            return None
        return self.policy.choose(candidates)
