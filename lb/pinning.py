"""Version pinning: which code version a client is served by. No I/O.

Theory of operation
-------------------
Versions are ordered oldest -> newest (`Pool.versions`). A client carries its
version in a cookie (`pinning.cookie`). For each request `Pinning.route`
decides the version:

- no valid pin (none, unknown label, malformed, too long): a version is drawn
  at random in proportion to each version's ready capacity (the summed
  effective weights of the nodes that take traffic), and the cookie is set;
- a pin whose version has capacity and is not overloaded: kept;
- otherwise the client moves *forward* to the nearest newer version with
  capacity, and the cookie is rewritten. A version is overloaded when its
  in-flight requests per unit of capacity exceed `max_overload` times the
  pool's (only counted once the pool has on average one request in flight per
  node, so an idle pool never sheds);
- only when no version as new as the pin has capacity at all (a rollback) does
  the client move *backward*, to the newest older version with capacity.

A retry stays within the request's version while an untried node of it is
left, then moves forward (`retry_version`). Counters per version feed metrics.
"""

from __future__ import annotations

import random
from collections import Counter

from .config import VERSION_RE

KEPT, ASSIGNED, FORWARD, BACKWARD = "kept", "assigned", "forward", "backward"
MAX_PIN_BYTES = 32


class Pinning:
    def __init__(self, cookie: str, max_age_s: float, max_overload: float,
                 rng: random.Random | None = None):
        self.cookie_prefix = cookie.encode() + b"="
        self.max_age_s = int(max_age_s)
        self.max_overload = max_overload
        self.rng = rng or random.Random()
        self.assignments: Counter = Counter()          # version -> count
        self.migrations: Counter = Counter()           # (from, to, direction) -> count
        self.pinned_requests: Counter = Counter()      # version -> requests routed by pin

    # -- the cookie ----------------------------------------------------------------
    def read_pin(self, headers, known: list[str]) -> str | None:
        """The pinned version from a request's Cookie headers, or None when absent or invalid."""
        prefix = self.cookie_prefix
        for name, value in headers:
            if len(name) != 6 or name.lower() != b"cookie":
                continue
            start = value.find(prefix)
            while start != -1:
                if start == 0 or value[start - 1] in b" ;":
                    end = value.find(b";", start)
                    raw = value[start + len(prefix):end if end != -1 else len(value)].strip()
                    if len(raw) > MAX_PIN_BYTES:
                        return None
                    pin = raw.decode("latin-1")
                    return pin if pin in known and VERSION_RE.match(pin) else None
                start = value.find(prefix, start + 1)
        return None

    def set_cookie(self, version: str) -> bytes:
        return (b"Set-Cookie: %s%s; Path=/; HttpOnly; SameSite=Lax; Max-Age=%d\r\n"
                % (self.cookie_prefix, version.encode(), self.max_age_s))

    # -- the decision ----------------------------------------------------------------
    def route(self, pin: str | None, pool) -> tuple[str | None, str]:
        """(version, how) for a request; version None when nothing takes traffic."""
        capacity = pool.version_capacity()
        if not capacity:
            return None, KEPT
        if pin is None:
            version = self._draw(capacity)
            self.assignments[version] += 1
            return version, ASSIGNED
        if capacity.get(pin) and not self._overloaded(pin, pool, capacity):
            self.pinned_requests[pin] += 1
            return pin, KEPT
        return self._move(pin, pool.versions, capacity)

    def retry_version(self, version: str, pool, tried) -> tuple[str | None, str]:
        """The version for a retry: the same while it has an untried node, else forward."""
        nodes = pool.by_version().get(version, ())
        if any(node not in tried for node in nodes):
            return version, KEPT
        capacity = {v: c for v, c in pool.version_capacity().items()
                    if any(n not in tried for n in pool.by_version()[v])}
        if not capacity:
            return version, KEPT            # every node tried: retry where we are
        return self._move(version, pool.versions, capacity, stay_if_able=False)

    def _move(self, pin: str, order: list[str], capacity: dict, stay_if_able: bool = True):
        index = order.index(pin) if pin in order else -1
        for version in order[index + 1:]:
            if capacity.get(version):
                self.migrations[pin, version, FORWARD] += 1
                return version, FORWARD
        if stay_if_able and capacity.get(pin):
            return pin, KEPT                # overloaded, but nothing newer exists
        for version in reversed(order[:index] if index >= 0 else order):
            if capacity.get(version):
                self.migrations[pin, version, BACKWARD] += 1
                return version, BACKWARD
        return None, KEPT

    def _draw(self, capacity: dict) -> str:
        versions = list(capacity)
        return self.rng.choices(versions, weights=[capacity[v] for v in versions], k=1)[0]

    def _overloaded(self, version: str, pool, capacity: dict) -> bool:
        eligible = pool.eligible()
        total = sum(b.inflight for b in eligible)
        if total < len(eligible):
            return False
        mine = sum(b.inflight for b in pool.by_version()[version])
        return mine * sum(capacity.values()) > self.max_overload * total * capacity[version]
