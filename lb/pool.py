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
- least_conn: the lowest (in-flight + 1) / weight, equal ones in turn;
(the weight used is `effective_weight`: the configured weight times the
slow-start factor of a node that just came back, see health.py)
- round_robin: smooth weighted round robin (each backend gains its weight,
  the leader is picked and pays back the total);
- random_two: two candidates drawn by weight, the less loaded one wins.

Admin states change only through `TRANSITIONS`, a table of (state, event) ->
new state; an event missing from the table raises LbError naming the node,
its state and the command. Operator commands are `drain`, `ready`, `maint`;
`idle` (nothing left in flight) and `deadline` (drain.timeout passed) come
from the proxy. A draining node takes no new request; what is in flight ends
on its own, and the node is `drained` when nothing is left.
"""

from __future__ import annotations

import random
from typing import Iterable

from .config import BackendConfig
from .errors import LbError
from .stats import BackendStats

READY, DRAINING, DRAINED, MAINT = "ready", "draining", "drained", "maint"
UP, DOWN, EJECTED = "up", "down", "ejected"
ADMIN_STATES = (READY, DRAINING, DRAINED, MAINT)

TRANSITIONS = {
    (READY, "drain"): DRAINING,
    (DRAINING, "drain"): DRAINING,
    (DRAINED, "drain"): DRAINED,
    (READY, "ready"): READY,
    (DRAINING, "ready"): READY,
    (DRAINED, "ready"): READY,
    (MAINT, "ready"): READY,
    (READY, "maint"): MAINT,
    (DRAINING, "maint"): MAINT,
    (DRAINED, "maint"): MAINT,
    (MAINT, "maint"): MAINT,
    (DRAINING, "idle"): DRAINED,
    (DRAINING, "deadline"): DRAINED,
}


def transition(backend: "Backend", event: str, now: float) -> str:
    """Apply `event` to the backend's admin state; returns the new state.

    Raises LbError(409) when the table has no such transition.
    """
    new = TRANSITIONS.get((backend.admin_state, event))
    if new is None:
        expected = sorted(state for state, ev in TRANSITIONS if ev == event)
        raise LbError(f"'{event}' expects a server in {' or '.join(expected)}; "
                      f"{backend.name} is {backend.admin_state}", 409)
    if new == DRAINING and backend.admin_state != DRAINING:
        backend.drain_started = now
    backend.admin_state = new
    return new


class HealthState:
    """Per-backend counters the health rules (health.py) need."""

    __slots__ = ("passes", "fails", "passive_fails", "ejected_until", "ejections",
                 "last_ejection_end", "ramp_start", "last_check")

    def __init__(self):
        self.passes = 0
        self.fails = 0
        self.passive_fails = 0
        self.ejected_until = 0.0
        self.ejections = 0
        self.last_ejection_end = float("-inf")
        self.ramp_start: float | None = None
        self.last_check: dict | None = None


class Backend:
    """One backend server and its runtime counters."""

    __slots__ = ("name", "host", "port", "version", "weight", "admin_state", "health",
                 "inflight", "tunnels", "requests", "errors", "rr_current", "drain_started",
                 "drain_cut", "hstate", "ramp_factor", "effective_weight", "stats")

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
        self.drain_started = 0.0
        self.drain_cut = 0          # requests and tunnels closed by the last drain's deadline
        self.hstate = HealthState()
        self.stats = BackendStats()
        self.ramp_factor = 1.0      # slow start: 0.1 .. 1.0
        self.effective_weight = float(self.weight)

    def set_weight(self, weight: int) -> None:
        self.weight = weight
        self.effective_weight = weight * self.ramp_factor

    def set_ramp(self, factor: float) -> None:
        self.ramp_factor = factor
        self.effective_weight = self.weight * factor

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def idle(self) -> bool:
        return self.inflight == 0 and self.tunnels == 0

    @property
    def takes_traffic(self) -> bool:
        return self.admin_state == READY and self.health == UP and self.weight > 0

    def describe(self, now: float | None = None) -> dict:
        hstate = self.hstate
        info = {"name": self.name, "address": self.address, "version": self.version,
                "weight": self.weight, "state": self.admin_state, "health": self.health,
                "inflight": self.inflight, "tunnels": self.tunnels,
                "requests": self.requests, "errors": self.errors,
                "effective_weight": round(self.effective_weight, 1),
                "last_check": hstate.last_check}
        if self.health == EJECTED and now is not None:
            info["ejected_for_s"] = round(max(hstate.ejected_until - now, 0.0), 1)
        return info


class LeastConn:
    def __init__(self):
        self._turn = 0

    def choose(self, candidates: list[Backend]) -> Backend:
        # Ties take turns among themselves. ("The first lowest after a rotating start"
        # would hand the turns of a node that cannot win, e.g. one in slow start, to
        # whichever node follows it.)
        ties, best_load = None, None
        for backend in candidates:
            load = (backend.inflight + 1) / backend.effective_weight
            if ties is None or load < best_load:
                ties, best_load = [backend], load
            elif load == best_load:
                ties.append(backend)
        self._turn += 1
        return ties[self._turn % len(ties)]


class RoundRobin:
    def choose(self, candidates: list[Backend]) -> Backend:
        total = 0
        best = None
        for backend in candidates:
            backend.rr_current += backend.effective_weight
            total += backend.effective_weight
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
        first, second = self._rng.choices(candidates, weights=[b.effective_weight for b in candidates],
                                          k=2)
        if first.inflight * second.effective_weight <= second.inflight * first.effective_weight:
            return first
        return second


POLICIES = {"least_conn": LeastConn, "round_robin": RoundRobin, "random_two": RandomTwo}


class Pool:
    """The backends in config order, and the choice of one for a request."""

    def __init__(self, configs: Iterable[BackendConfig], policy: str):
        self.backends: dict[str, Backend] = {c.name: Backend(c) for c in configs}
        self.policy = POLICIES[policy]()
        self._eligible: list[Backend] | None = None
        self._by_version: dict[str, list[Backend]] | None = None
        self._capacity: dict[str, float] | None = None
        # Versions oldest -> newest: first seen first; `set target` moves one last.
        self.versions: list[str] = []
        for backend in self.backends.values():
            self.note_version(backend.version)

    def note_version(self, version: str) -> None:
        """A label never seen before is the newest."""
        if version not in self.versions:
            self.versions.append(version)

    def set_target(self, version: str) -> None:
        if version in self.versions:
            self.versions.remove(version)
        self.versions.append(version)

    def get(self, name: str) -> Backend:
        """The backend called `name`. Raises LbError(404) listing the known names."""
        backend = self.backends.get(name)
        if backend is None:
            raise LbError(f"unknown server {name!r}; servers: {self.names_summary()}", 404)
        return backend

    def names_summary(self) -> str:
        names = list(self.backends)
        if len(names) > 4 and all(n.rstrip("0123456789") == names[0].rstrip("0123456789") and
                                  n != n.rstrip("0123456789") for n in names):
            return f"{names[0]}..{names[-1]}"
        return ", ".join(names) or "none"

    def version_rows(self) -> list[dict]:
        rows = []
        capacity = self.version_capacity()
        for order, version in enumerate(self.versions):
            nodes = [b for b in self.backends.values() if b.version == version]
            rows.append({"version": version, "order": order, "nodes": len(nodes),
                         "ready_capacity": round(capacity.get(version, 0.0), 1)})
        return rows

    def changed(self) -> None:
        """Call after any change of state, health or weight (slow-start ramps included)."""
        self._eligible = None
        self._by_version = None
        self._capacity = None

    def by_version(self) -> dict[str, list[Backend]]:
        """The eligible backends of each version that has any."""
        if self._by_version is None:
            groups: dict[str, list[Backend]] = {}
            for backend in self.eligible():
                groups.setdefault(backend.version, []).append(backend)
            self._by_version = groups
        return self._by_version

    def version_capacity(self) -> dict[str, float]:
        """Ready capacity per version: the summed effective weights of eligible nodes."""
        if self._capacity is None:
            self._capacity = {v: sum(b.effective_weight for b in nodes)
                              for v, nodes in self.by_version().items()}
        return self._capacity

    def eligible(self) -> list[Backend]:
        if self._eligible is None:
            self._eligible = [b for b in self.backends.values() if b.takes_traffic]
        return self._eligible

    def choose(self, exclude: Backend | tuple = (), version: str | None = None) -> Backend | None:
        """A backend for a new request (of `version`, when given), or None.

        `exclude` (the backends already tried for this request) is avoided
        while any other candidate is eligible.
        """
        candidates = self.eligible() if version is None else self.by_version().get(version, [])
        if exclude:
            others = [b for b in candidates if b not in exclude]
            candidates = others or candidates
        if not candidates:
            return None
        return self.policy.choose(candidates)
