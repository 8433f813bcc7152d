"""The handoff's wire format: what an old master tells a new one at an upgrade. No I/O.

Theory of operation
-------------------
Two versions of lb's code speak this (the old master's and the one on disk), so
everything here is builtins (dicts, lists, tuples, numbers, strings), pickled by
the channel (lb/process/channel.py): no class of either version crosses. Each
kind of plain data of lb/core/planes.py has a `*_to_wire` and a `*_from_wire`;
a reader takes a field it lacks from its default and ignores one it does not
know, so a field added later does not break an upgrade either way.

`snapshot` is the old control plane's runtime state (every node's admin state,
version, weight, health, ejection, drain and counters, the version order, the
pin and pool counters, the generation of its last view). The new master's
`Control.restore` (lb/control/plane.py) lays it over its config: admin states and
settings through its own setters, the rest with `restore_node` and
`restore_pool_stats` from here. Times cross as ages (seconds before `now`, passed
in), since the two processes' monotonic clocks are not comparable.

`FORMAT` names the snapshot's layout. A new master refuses a snapshot whose
format it does not know (`known_format`), and the old master then serves on.
It changes only when a field's meaning changes, never for an added field: the
previous commit's code and this one upgrade to each other in both directions.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from .commands import backend_config
from .config import BackendConfig
from .nodes import DRAINED, DRAINING, MAINT, READY, Health, Node
from .planes import NodeReport, NodeView, Report, RoutingView
from .stats import PoolStats, StatsDelta

FORMAT = 1
NODE_VIEW_FIELDS = tuple(f.name for f in dataclasses.fields(NodeView))
# The transition that takes a node born `new` to the admin state the old master had it in.
RESTORE = {READY: "start", DRAINING: "restore_draining", DRAINED: "restore_drained", MAINT: "restore_maint"}


def known_format(state: dict) -> bool:
    """Whether this code can restore a snapshot (the old master may be another version)."""
    return state.get("format") == FORMAT


# -- views and reports --------------------------------------------------------------

def view_to_wire(view: RoutingView) -> dict:
    return {"generation": view.generation, "versions": list(view.versions),
            "nodes": [{name: getattr(node, name) for name in NODE_VIEW_FIELDS} for node in view.nodes]}


def view_from_wire(wire: dict) -> RoutingView:
    return RoutingView(wire["generation"], tuple(
        NodeView(**{name: node[name] for name in NODE_VIEW_FIELDS if name in node}) for node in wire["nodes"]),
        tuple(wire["versions"]))


def _delta_to_wire(delta: StatsDelta) -> dict:
    return {name: getattr(delta, name) for name in StatsDelta.__slots__}


def _delta_from_wire(wire: dict) -> StatsDelta:
    delta = StatsDelta()
    for name in StatsDelta.__slots__:
        if name in wire:
            setattr(delta, name, wire[name])
    return delta


def report_to_wire(report: Report) -> dict:
    return {"generation": report.generation, "failed": dict(report.failed), "retries": report.retries,
            "pins": {key: dict(counts) for key, counts in report.pins.items()} if report.pins else None,
            "clients": report.clients, "queued": report.queued,
            "nodes": {name: {"inflight": got.inflight, "tunnels": got.tunnels, "stats": _delta_to_wire(got.stats),
                             "outcomes": got.outcomes, "cut": got.cut} for name, got in report.nodes.items()}}


def report_from_wire(wire: dict) -> Report:
    pins = wire.get("pins")
    return Report(wire["generation"], {
        name: NodeReport(got["inflight"], got["tunnels"], _delta_from_wire(got.get("stats", {})),
                         got.get("outcomes", []), got.get("cut")) for name, got in wire["nodes"].items()},
        Counter(wire.get("failed", {})), wire.get("retries", 0),
        {key: Counter(counts) for key, counts in pins.items()} if pins else None,
        wire.get("clients", 0), wire.get("queued", 0))


def _ago(now: float, then: float | None) -> float | None:
    return None if then is None or then == float("-inf") else now - then


def snapshot(control, now: float, pid: int) -> dict:
    """The control plane's runtime state, for the new master; `pid` is the old master's.
    Times are ages (seconds before `now`), not clock readings."""
    config_names = {b.name for b in control.config.backends}
    nodes = {}
    for node in control.pool.backends.values():
        hs, stats = node.hstate, node.stats
        nodes[node.name] = {
            "state": str(node.admin_state), "version": node.version, "weight": node.weight,
            "version_pending": node.version_pending,
            "max_conns": node.max_conns, "address": node.address, "added": node.name not in config_names,
            "health": str(node.health), "inflight": node.inflight, "tunnels": node.tunnels,
            "requests": node.requests, "errors": node.errors, "drain_cut": node.drain_cut,
            "drain_age": now - node.drain_started if node.admin_state == DRAINING else None,
            "hstate": {"passes": hs.passes, "fails": hs.fails, "passive_fails": hs.passive_fails,
                       "ejections": hs.ejections, "last_check": hs.last_check,
                       "reported_version": hs.reported_version,
                       "ejected_for": hs.ejected_until - now if hs.ejected_until > now else 0.0,
                       "ejection_end_age": _ago(now, hs.last_ejection_end),
                       "ramp_age": _ago(now, hs.ramp_start)},
            "stats": {"by_class": stats.by_class, "histogram": stats.histogram,
                      "histogram_sum": stats.histogram_sum, "retries": stats.retries,
                      "connect_errors": stats.connect_errors, "lb_failures": stats.lb_failures,
                      "since": stats.since, "window": stats.window.export()}}
    pool_stats = control.stats
    return {"format": FORMAT, "pid": pid, "generation": control.generation,
            "upgrades": control.upgrades, "versions": list(control.pool.versions), "nodes": nodes,
            "target": control.pool.target,
            "removing": sorted(control.removing), "clients": control.clients,
            "pins": {key: dict(counts) for key, counts in control.pins.items()},
            "pool": {"failed": dict(pool_stats.failed), "retries": pool_stats.retries,
                     "drains": pool_stats.drains, "drain_durations": list(pool_stats.drain_durations),
                     "since": pool_stats.since}}


def added_backend(name: str, saved: dict) -> BackendConfig:
    """The config of a node the old master had added at run time (`added`)."""
    return backend_config({"name": name, "address": saved["address"], "version": saved["version"],
                           "weight": saved["weight"]})


def restore_node(node: Node, saved: dict, now: float) -> None:
    """Lay what the snapshot says of a node's traffic and health over it: its drain's start
    and cut, its counters, its health and the checks' state, its stats. Its admin state and
    settings are the control plane's to set (`Control.restore`)."""
    if saved["drain_age"] is not None:
        node.drain_started = now - saved["drain_age"]
    node.drain_cut = saved["drain_cut"]
    node.inflight, node.tunnels = saved["inflight"], saved["tunnels"]
    node.requests, node.errors = saved["requests"], saved["errors"]
    node.health = Health(saved["health"])
    hs, got = node.hstate, saved["hstate"]
    hs.passes, hs.fails, hs.passive_fails = got["passes"], got["fails"], got["passive_fails"]
    hs.ejections, hs.last_check = got["ejections"], got["last_check"]
    hs.reported_version = got.get("reported_version")
    hs.ejected_until = now + got["ejected_for"] if got["ejected_for"] else 0.0
    hs.last_ejection_end = now - got["ejection_end_age"] if got["ejection_end_age"] is not None else float("-inf")
    hs.ramp_start = now - got["ramp_age"] if got["ramp_age"] is not None else None
    stats, got = node.stats, saved["stats"]
    stats.by_class, stats.histogram, stats.histogram_sum = got["by_class"], got["histogram"], got["histogram_sum"]
    stats.retries, stats.connect_errors, stats.lb_failures = got["retries"], got["connect_errors"], got["lb_failures"]
    stats.since = got["since"]
    stats.window.load(got["window"])


def restore_pool_stats(stats: PoolStats, got: dict) -> None:
    """Lay the snapshot's pool counters (`pool`) over the new control plane's."""
    stats.failed, stats.retries = Counter(got["failed"]), got["retries"]
    stats.drains, stats.drain_durations = got["drains"], list(got["drain_durations"])
    stats.since = got["since"]


def first_report(state: dict) -> Report:
    """What the old workers carry at the handoff, as the predecessor's report until it sends
    its own: the new master counts their requests from the first moment."""
    return Report(state["generation"], {
        name: NodeReport(saved["inflight"], saved["tunnels"], StatsDelta())
        for name, saved in state["nodes"].items()}, Counter(), 0, None, state["clients"])
