"""The backend nodes as the control plane knows them: admin state, health, weights. No I/O.

Theory of operation
-------------------
A `Node` carries two independent axes: the admin state an operator sets
(ready / draining / drained / maint) and the health the checks set (`Health`:
up / down / ejected / version_mismatch / drain_requested). A node takes new
requests only when it is `ready` and `up` with a weight above zero, except in
panic (`Pool.panic`, decided by health.py): when no node at all takes traffic,
the `ready` nodes that fail their checks are routed to rather than none.
`drain_requested` is the node's own request to be drained (its health check
answered a `health.drain_on` status or `X-Lb-Drain: 1`): it sits on the health
axis, apart from the operator's admin state, so that an operator's `ready`
cannot override the node's request and the node's 200 cannot undo an
operator's `drain`.

Admin states change only through `TRANSITIONS`, a table of (state, event) ->
new state, and `transition()` is the only code that assigns `admin_state`; an
event missing from the table raises CommandError naming the node, its state
and the command. A node is born `new`: `start` puts a node of the config in
service, `join` holds a node added at run time (`add server`, reload) in
maint, and `restore_*` apply what the state file recorded or, at an upgrade, what
the old master handed over (only there can a node be born draining: the old
master's workers still carry its requests). Operator commands
are `drain`, `ready`, `maint`; `idle` (nothing left in flight) and `deadline`
(drain.timeout passed) come from the control plane. A draining node takes no
new request; what is in flight ends on its own, and the node is `drained` when
nothing is left.

`Pool` is the control plane's table of nodes, their version order, and the
`RoutingView` it publishes to the data plane (planes.py): the only thing the
data plane learns of admin states and health.

Version labels come from two sources of different weight. A label from the
config file is a record that goes stale (a deploy changes the nodes and the
state file, not the file), so a health check that reports another version
corrects it. A label set at run time (`set version`, `add server ... VERSION`,
a reload that changed it) is an operator's or a deploy's claim about a node it
just changed: it is `version_pending` until a check confirms it. While any label
is pending, or a target declared by `set target` is not yet every node's label
(maint apart), a version move is in progress (`move_in_progress`), and a check
that disagrees with a label is a wrong node, not a stale label (health.py).
"""

from __future__ import annotations

import enum
from typing import Iterable

from .config import BackendConfig
from .errors import CommandError
from .planes import Endpoint, NodeView, RoutingView
from .stats import BackendStats


class AdminState(enum.StrEnum):
    NEW = "new"
    READY = "ready"
    DRAINING = "draining"
    DRAINED = "drained"
    MAINT = "maint"


class Health(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    EJECTED = "ejected"
    VERSION_MISMATCH = "version_mismatch"
    DRAIN_REQUESTED = "drain_requested"       # the node asked to be drained (health.drain_on)


NEW, READY, DRAINING, DRAINED, MAINT = AdminState
UP, DOWN, EJECTED, VERSION_MISMATCH, DRAIN_REQUESTED = Health
ADMIN_STATES = (READY, DRAINING, DRAINED, MAINT)     # the ones a running node can be in

TRANSITIONS = {
    (NEW, "start"): READY,
    (NEW, "join"): MAINT,
    (NEW, "restore_drained"): DRAINED,
    (NEW, "restore_maint"): MAINT,
    (NEW, "restore_draining"): DRAINING,      # handed over by the old master at an upgrade
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


def transition(node: "Node", event: str, now: float) -> AdminState:
    """Apply `event` to the node's admin state; returns the new state.

    Raises CommandError when the table has no such transition.
    """
    new = TRANSITIONS.get((node.admin_state, event))
    if new is None:
        expected = sorted(state for state, ev in TRANSITIONS if ev == event)
        raise CommandError(f"'{event}' expects a server in {' or '.join(expected)}; "
                           f"{node.name} is {node.admin_state}")
    if new == DRAINING and node.admin_state != DRAINING:
        node.drain_started = now
    node.admin_state = new
    return new


class HealthState:
    """Per-node counters the health rules (health.py) need."""

    __slots__ = ("passes", "fails", "passive_fails", "ejected_until", "ejections",
                 "last_ejection_end", "ramp_start", "last_check", "reported_version",
                 "window_start", "window_requests", "window_failures", "drain_refused")

    def __init__(self):
        self.passes = 0
        self.fails = 0
        self.passive_fails = 0
        self.ejected_until = 0.0
        self.ejections = 0
        self.window_start: float | None = None     # passive.window: when this one began
        self.window_requests = 0
        self.window_failures = 0
        self.drain_refused = False     # it asked to be drained as its version's last node (logged once)
        self.last_ejection_end = float("-inf")
        self.ramp_start: float | None = None
        self.last_check: dict | None = None
        self.reported_version: str | None = None    # by the last passing check that carried one


class Node(Endpoint):
    """One backend server: its states, and the counters the data plane reported."""

    __slots__ = ("name", "host", "port", "version", "weight", "admin_state", "health",
                 "inflight", "tunnels", "requests", "errors", "drain_started", "drain_cut",
                 "hstate", "ramp_factor", "effective_weight", "stats", "max_conns", "version_pending")

    def __init__(self, config: BackendConfig, since: float = 0.0):
        self.name = config.name
        self.host, self.port = config.address
        self.version = config.version
        self.version_pending = False    # set at run time, not yet confirmed by a check
        self.weight = config.weight
        self.max_conns = config.max_conns
        self.admin_state = NEW
        self.health = UP
        self.inflight = 0           # as last reported by the data plane
        self.tunnels = 0
        self.requests = 0
        self.errors = 0
        self.drain_started = 0.0
        self.drain_cut = 0          # requests and tunnels closed by the last drain's deadline
        self.hstate = HealthState()
        self.stats = BackendStats(since)      # since: wall clock, for `show stats`
        self.ramp_factor = 1.0      # slow start: 0.1 .. 1.0
        self.effective_weight = float(self.weight)

    def set_weight(self, weight: int) -> None:
        self.weight = weight
        self.effective_weight = weight * self.ramp_factor

    def set_ramp(self, factor: float) -> None:
        self.ramp_factor = factor
        self.effective_weight = self.weight * factor

    @property
    def takes_traffic(self) -> bool:
        return self.admin_state == READY and self.health == UP and self.weight > 0

    @property
    def panic_candidate(self) -> bool:
        """Routed to in panic: in service by the operator, failing its checks (not a node that
        asked to be drained, nor one kept out for its version, which health.unstrand handles)."""
        return self.admin_state == READY and self.health in (DOWN, EJECTED) and self.weight > 0

    def routed(self, panic: bool) -> bool:
        """Whether new requests may go to it, with the pool in panic or not."""
        return self.takes_traffic or (panic and self.panic_candidate)

    def view(self, panic: bool = False) -> NodeView:
        return NodeView(self.name, self.host, self.port, self.version, self.effective_weight,
                        self.routed(panic), self.admin_state == DRAINING, self.max_conns,
                        self.admin_state == READY and self.health == UP and self.weight == 0)

    def describe(self, now: float | None = None) -> dict:
        hstate = self.hstate
        info = {"name": self.name, "address": self.address, "version": self.version,
                "weight": self.weight, "max_conns": self.max_conns,
                "state": str(self.admin_state), "health": str(self.health),
                "inflight": self.inflight, "tunnels": self.tunnels,
                "requests": self.requests, "errors": self.errors,
                "effective_weight": round(self.effective_weight, 1),
                "last_check": hstate.last_check}
        if self.health == EJECTED and now is not None:
            info["ejected_for_s"] = round(max(hstate.ejected_until - now, 0.0), 1)
        return info


class Pool:
    """The nodes in config order, and the versions oldest -> newest."""

    def __init__(self, configs: Iterable[BackendConfig], since: float = 0.0):
        self.backends: dict[str, Node] = {c.name: Node(c, since) for c in configs}
        # Versions oldest -> newest: first seen first; `set target` moves one last.
        self.versions: list[str] = []
        self.target: str | None = None      # declared by `set target` (what a deploy rolls to)
        self.panic = False                  # every node fails its checks: route to them all (health.py)
        for node in self.backends.values():
            self.note_version(node.version)

    def note_version(self, version: str) -> None:
        """A label never seen before is the newest."""
        if version not in self.versions:
            self.versions.append(version)

    def set_target(self, version: str) -> None:
        """Declare `version` the newest: what a deploy rolls to (a version move begins)."""
        self.restore_order([version])
        self.target = version

    def restore_order(self, versions: Iterable[str]) -> None:
        """Put `versions` last, in that order (a saved order, oldest first); declares nothing."""
        for version in versions:
            if version in self.versions:
                self.versions.remove(version)
            self.versions.append(version)

    def relabel(self, node: "Node", version: str, pending: bool) -> None:
        """Give the node a new version label; `pending`: a claim made at run time, which a
        check must confirm (see move_in_progress)."""
        node.version = version
        node.version_pending = pending
        self.note_version(version)

    def move_in_progress(self) -> str | None:
        """Why a version move is in progress (a label set at run time that no check has
        confirmed, or a declared target that a node outside maint is not labelled with);
        None when there is none."""
        for node in self.backends.values():
            if node.version_pending:
                return f"{node.name} was set to {node.version} at run time and no check has confirmed it yet"
        for node in self.backends.values():
            if self.target is not None and node.version != self.target and node.admin_state != MAINT:
                return f"the target is {self.target} and {node.name} is on {node.version}"
        return None

    def get(self, name: str) -> Node:
        """The node called `name`. Raises CommandError listing the known names."""
        node = self.backends.get(name)
        if node is None:
            raise CommandError(f"unknown server {name!r}; servers: {self.names_summary()}")
        return node

    def names_summary(self) -> str:
        names = list(self.backends)
        if len(names) > 4 and all(n.rstrip("0123456789") == names[0].rstrip("0123456789") and
                                  n != n.rstrip("0123456789") for n in names):
            return f"{names[0]}..{names[-1]}"
        return ", ".join(names) or "none"

    def set_panic(self, panic: bool) -> None:
        """Enter or leave panic (health.panic decides which)."""
        self.panic = panic

    def version_capacity(self) -> dict[str, float]:
        """Ready capacity per version: the summed effective weights of nodes taking traffic
        (in panic: of the nodes routed to)."""
        capacity: dict[str, float] = {}
        for node in self.backends.values():
            if node.routed(self.panic):
                capacity[node.version] = capacity.get(node.version, 0.0) + node.effective_weight
        return capacity

    def version_rows(self) -> list[dict]:
        capacity = self.version_capacity()
        rows = []
        for order, version in enumerate(self.versions):
            nodes = [n for n in self.backends.values() if n.version == version]
            rows.append({"version": version, "order": order, "nodes": len(nodes),
                         "ready_capacity": round(capacity.get(version, 0.0), 1)})
        return rows

    def view(self, generation: int) -> RoutingView:
        return RoutingView(generation, tuple(n.view(self.panic) for n in self.backends.values()),
                           tuple(self.versions))
