"""Version pinning: which code version a client is served by. No I/O.

Theory of operation
-------------------
Versions are ordered oldest -> newest (`RoutingTable.versions`). A client carries its
version in a cookie (`pinning.cookie`). For each request `Pinning.route`
decides the version:

- no valid pin (none, unknown label, malformed, too long): a version is drawn
  at random in proportion to each version's ready capacity (the summed
  effective weights of the nodes that take traffic), and the cookie is set
  (Secure on a TLS connection with `pinning.secure: auto`; always or never with true/false);
  what to set is a decision, a `PinCookie`; each front door renders it (lb/proxy/responses.py);
- a pin whose version has capacity and is not overloaded: kept;
- otherwise the client moves *forward* to the nearest newer version with
  capacity, and the cookie is rewritten. A version is overloaded when its
  recent request rate per unit of capacity exceeds `max_overload` times the
  pool's. Rates decay exponentially (`RATE_TAU_S`) and count only past
  `MIN_RATE` requests, so an idle pool never sheds. Shedding aims below the
  ceiling (`SHED_TARGET` x max_overload, leaving room for noise and lag) and is
  proportional: at a load ratio r above that target, a request's client moves
  with probability 1 - target / r. Moving every client of an overloaded
  version at once would overshoot while the rate catches up, and since moved
  clients never come back, the newer version would end up overloaded instead;
- only when no version as new as the pin has capacity at all (a rollback) does
  the client move *backward*, to the newest older version with capacity.

A retry stays within the request's version while an untried node of it is
left, then moves forward (`retry_version`). Counters per version feed metrics.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import NamedTuple

from .memo import Memo
from .values import VERSION_RE

KEPT, ASSIGNED, FORWARD, BACKWARD = "kept", "assigned", "forward", "backward"
MAX_PIN_BYTES = 32
RATE_TAU_S = 0.5          # how quickly the per-version request rate forgets
MIN_RATE = 20.0           # below this many recent requests nothing is overloaded
SHED_TARGET = 0.9         # shed towards this fraction of max_overload


class PinCookie(NamedTuple):
    """The cookie a response sets to pin its client to `version`, for `max_age_s`."""
    name: bytes
    version: bytes
    max_age_s: int
    secure: bool


def names_cookie(value: bytes, prefix: bytes) -> bool:
    """Whether a Cookie header's value holds the pin cookie itself (not only a longer name)."""
    start = value.find(prefix)
    while start != -1:
        if start == 0 or value[start - 1] in b" ;":
            return True
        start = value.find(prefix, start + 1)
    return False


class Pinning:
    def __init__(self, cookie: str, max_age_s: float, max_overload: float,
                 rng: random.Random | None = None, *, secure: str | bool = "auto"):
        self.cookie_prefix = cookie.encode() + b"="
        self.max_age_s = int(max_age_s)
        self.max_overload = max_overload
        self.rng = rng or random.Random()
        self.assignments: Counter = Counter()          # version -> count
        self.migrations: Counter = Counter()           # (from, to, direction) -> count
        self.pinned_requests: Counter = Counter()      # version -> requests routed by pin
        self._rates: dict[str, float] = {}             # version -> decayed request count
        self._rates_at = 0.0
        self._secure = (secure is True, secure is not False)    # Secure over (plain, TLS)
        self._cookies = Memo(256, 64 * 1024, 1024)     # version -> its PinCookies (plain, TLS); versions are few

    def take_counts(self) -> dict[str, Counter]:
        """The counters since the last call (for a report), and start them again."""
        counts = {"assignments": self.assignments, "migrations": self.migrations,
                  "pinned_requests": self.pinned_requests}
        self.assignments, self.migrations, self.pinned_requests = Counter(), Counter(), Counter()
        return counts

    # -- the cookie ----------------------------------------------------------------
    def read_pin(self, headers, known: list[str]) -> str | None:
        """The pinned version from a request's Cookie headers, or None when absent or invalid."""
        for name, value in headers:
            if len(name) == 6 and name.lower() == b"cookie" and self.cookie_prefix in value:
                pin = self.pin_in(value, known)
                if pin is not None or names_cookie(value, self.cookie_prefix):
                    return pin
        return None

    def pin_in(self, value: bytes, known) -> str | None:
        """The pinned version in one Cookie header's value, or None when absent or invalid."""
        prefix = self.cookie_prefix
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

    def pin_cookie(self, version: str, over_tls: bool) -> PinCookie:
        """The cookie pinning a client to `version`, for a request that came over TLS or not;
        made at a version's first use, not per request."""
        cookies = self._cookies.get(version)
        if cookies is None:
            cookies = tuple(PinCookie(self.cookie_prefix[:-1], version.encode(), self.max_age_s, secure)
                            for secure in self._secure)
            self._cookies.put(version, cookies, 3 * len(version) + 2 * len(self.cookie_prefix))
        return cookies[over_tls]

    # -- the decision ----------------------------------------------------------------
    def route(self, pin: str | None, pool, now: float) -> tuple[str | None, str]:
        """(version, how) for a request at `now`; version None when nothing takes traffic."""
        capacity = pool.version_capacity()
        if not capacity:
            return None, KEPT
        self._decay(now)
        if pin is None:
            version, how = self._draw(capacity), ASSIGNED
            self.assignments[version] += 1
        elif capacity.get(pin) and not self._shed(pin, capacity):
            version, how = pin, KEPT
            self.pinned_requests[pin] += 1
        else:
            version, how = self._move(pin, pool.versions, capacity)
        if version is not None:
            self._rates[version] = self._rates.get(version, 0.0) + 1.0
        return version, how

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
        if len(capacity) == 1:
            return next(iter(capacity))     # outside a deploy: no draw (1.4 -> 0.5 µs per route())
        versions = list(capacity)
        return self.rng.choices(versions, weights=[capacity[v] for v in versions], k=1)[0]

    def _decay(self, now: float) -> None:
        elapsed = now - self._rates_at
        if elapsed > 0.01:
            factor = math.exp(-elapsed / RATE_TAU_S)
            for version in self._rates:
                self._rates[version] *= factor
            self._rates_at = now

    def _shed(self, version: str, capacity: dict) -> bool:
        """Whether this request's client leaves its overloaded version (see the header)."""
        rates = self._rates
        total = sum(rates.get(v, 0.0) for v in capacity)
        if total < MIN_RATE:
            return False
        # load ratio: this version's rate per unit of capacity over the pool's
        ratio = rates.get(version, 0.0) * sum(capacity.values()) / (total * capacity[version])
        target = SHED_TARGET * self.max_overload
        return ratio > target and self.rng.random() < 1.0 - target / ratio
