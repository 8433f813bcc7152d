"""The control plane: the one object that owns the pool and changes it.

Theory of operation
-------------------
`Control` holds the nodes (lb/core/nodes.py) and applies every change to them:
admin commands (through the transition table), active health checks, passive
ejection, slow-start ramps, drain deadlines, reloads, the state file at start,
the old master's state at an upgrade (`restore`). After any change it publishes
a new `RoutingView` to the data plane and wakes whoever waits on a node (`wait`).
It never touches request bytes.

What the data plane did comes back in `Report`s (`on_report`, see
lb/core/planes.py): in-flight and tunnel counts, per-node stats deltas merged
into each node's counters, passive outcomes replayed in order, cut counts.
A draining node becomes drained when a report written under a view in which it
no longer took traffic shows nothing left on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from .. import tls
from ..core import handoff, health
from ..core.config import BackendConfig, Config
from ..core.nodes import (DRAIN_REQUESTED, DRAINED, DRAINING, MAINT, NEW, READY, UP, VERSION_MISMATCH, Node, Pool,
                          transition)
from ..core.planes import Report
from ..core.reload import (ADD, ADDRESS, AT_RESTART, BALANCE, KEEP, MAX_CONNS, REMOVE, VERSION, WEIGHT,
                           RunningNode, plan_reload, running_config)
from ..core.stats import PoolStats
from ..core.seams import Link
from .assets import Assets
from .checker import Checker
from .cluster import Membership
from .desired import Desired

log = logging.getLogger("lb.control")

SWEEP_INTERVAL_S = 0.1
SYNC_TIMEOUT_S = 1.0         # the longest an answer waits for every worker's report


class Control:
    """The pool's owner. `link` is the data plane (a `Link`, lb/core/seams.py)."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop):
        self.config = config
        self.certs: dict[int, list] = {}          # TLS listener index -> its CertInfo (lb/tls.py)
        self.loop = loop
        self.now = loop.time
        self.started = started = time.time()
        self.upgrades = 0                        # hitless upgrades this lb went through (handoff.py)
        self.panics = 0                          # times the pool entered panic (health.panic)
        self.pool = Pool(config.backends, started)
        self.stats = PoolStats(started)
        self.pins: dict[str, Counter] = {"assignments": Counter(), "migrations": Counter(),
                                         "pinned_requests": Counter()}
        self.pinning_on = config.pinning.mode == "version"
        self.clients = 0                         # client connections, as last reported
        self.deploy_note: tuple[float, dict] | None = None   # (when, what) a deploy last said of itself
        self.queued = 0                          # requests waiting for a capped backend, as reported
        self.link: Link | None = None
        self.generation = 0                      # of the last view published
        self.reported_generation = -1            # of the view the last report was written under
        self.drain_generation: dict[str, int] = {}   # node -> first view without it in service
        self.cutting: set[str] = set()           # nodes told to cut, awaiting the report
        self.removing: set[str] = set()          # dropped from the config: gone once drained
        self.state_changed = asyncio.Event()     # set and replaced on every node change
        self._reported = asyncio.Event()         # set and replaced on every report
        self.checker = Checker(self)
        self.assets = Assets(config)             # skew protection's index (control/assets.py)
        self._sweeper: asyncio.TimerHandle | None = None
        # cluster mode (lb/control/cluster.py): this lb's member key in etcd, None without `cluster:`
        self.cluster = Membership(self, config.cluster, config.resolve(config.admin.socket),
                                  tls=tls.etcd_context(config)) if config.cluster is not None else None
        # and the fleet's desired state there (lb/control/desired.py)
        self.desired = Desired(self, self.cluster) if self.cluster is not None else None

    def attach(self, link: Link) -> None:
        """Connect the data plane and hand it the current view and asset index."""
        self.link = link
        self.publish()
        if self.pinning_on:
            self.assets.load()
            link.apply_assets(self.assets.snapshot())

    def start(self) -> None:
        """The sweeper and the checks begin (after `place_nodes` and the listeners)."""
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        self.checker.start()
        if self.cluster is not None:
            self.cluster.start()
            self.desired.start()

    def place_nodes(self) -> None:
        """Nodes the state file did not place go into service."""
        for node in self.pool.backends.values():
            if node.admin_state == NEW:
                transition(node, "start", self.now())
        self.changed()

    async def stop(self) -> None:
        """No more checks and sweeps (at exit, and while an upgrade hands the state over). The
        member key stays until its lease expires: a new master takes it over (see leave_cluster)."""
        await self.checker.stop()
        if self.cluster is not None:
            await self.desired.stop()
            await self.cluster.stop()
        if self.pinning_on:
            self.assets.save(in_thread=False)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def leave_cluster(self) -> None:
        """At a stop: the member key goes from etcd now (its lease revoked), not at its expiry."""
        if self.cluster is not None:
            await self.desired.stop()
            await self.cluster.stop(leave=True)

    # -- publishing ---------------------------------------------------------------
    def publish(self) -> None:
        self._update_panic()
        self.generation += 1
        if self.link is not None:
            self.link.apply_view(self.pool.view(self.generation))
        self.assets.view(self.pool.version_capacity(), self.pool.versions, time.time())

    def _update_panic(self) -> None:
        """Enter or leave panic (lb/core/health.py) before a view goes out; said once each way."""
        panic = health.panic(self.pool.backends.values(), self.config.health.panic)
        if panic == self.pool.panic:
            return
        self.pool.set_panic(panic)
        if panic:
            self.panics += 1
            routed = [n.name for n in self.pool.backends.values() if n.panic_candidate]
            log.warning("PANIC: no node passes its health checks; routing to every ready node "
                        "that fails them (%s) rather than answering 503 (health.panic)", ", ".join(routed))
        else:
            log.warning("panic over: %s", "a node passes its health checks again"
                        if any(n.takes_traffic for n in self.pool.backends.values())
                        else "no ready node is left to route to")

    def changed(self) -> None:
        """After any change of a node: publish the view, wake whoever waits."""
        self.publish()
        self.state_changed.set()
        self.state_changed = asyncio.Event()

    async def applied(self) -> None:
        """Until the data plane has reported under the latest view (with workers: every one
        of them has applied it), so that a reply to `drain` means no new request goes there.
        Bounded: a worker that does not answer is being replaced, and starts on the new view."""
        generation = self.generation
        deadline = self.now() + SYNC_TIMEOUT_S
        while self.reported_generation < generation and self.now() < deadline:
            try:
                await asyncio.wait_for(self._reported.wait(), deadline - self.now())
            except asyncio.TimeoutError:
                break

    async def synced(self) -> None:
        """Bring the reported counters up to date before answering with them: the data plane
        reports now (in this process), or every worker has reported (bounded wait)."""
        if self.link is not None:
            waiting = self.link.collect()
            if waiting is not None:
                try:
                    await asyncio.wait_for(waiting, SYNC_TIMEOUT_S)
                except asyncio.TimeoutError:
                    log.warning("a worker did not report within %.1fs; answering with older counts",
                                SYNC_TIMEOUT_S)

    # -- admin states ---------------------------------------------------------------
    def set_admin_state(self, node: Node, event: str) -> str:
        """drain / ready / maint a node. Raises CommandError when the table forbids it."""
        was = node.admin_state
        new = transition(node, event, self.now())
        if new == READY and was in (DRAINED, MAINT):
            health.start_checking(node)   # checked before it gets traffic
        if new == DRAINING and was != DRAINING:
            self.stats.drains += 1
            node.drain_cut = 0
            self.drain_generation[node.name] = self.generation + 1   # the view published below
        self.changed()
        return node.admin_state

    def add_node(self, config: BackendConfig, event: str = "join") -> Node:
        node = Node(config, time.time())
        transition(node, event, self.now())
        self.pool.backends[node.name] = node
        self.pool.note_version(node.version)
        self.changed()
        return node

    def remove_node(self, node: Node) -> None:
        self.pool.backends.pop(node.name, None)
        self.removing.discard(node.name)
        self.changed()

    # -- a node's settings: admin commands, reloads and the state file change them here -------
    def set_version(self, node: Node, version: str, pending: bool = True) -> None:
        """Relabel a node; `pending`: a claim (an admin command, a reload) that the next check
        must confirm (see Pool.move_in_progress)."""
        self.pool.relabel(node, version, pending)
        self.changed()

    def set_weight(self, node: Node, weight: int) -> None:
        node.set_weight(weight)
        self.changed()

    def set_max_conns(self, node: Node, max_conns: int) -> None:
        node.max_conns = max_conns
        self.changed()

    def set_address(self, node: Node, address: tuple[str, int]) -> None:
        node.host, node.port = address
        self.changed()

    def set_target(self, version: str) -> None:
        """Declare `version` the newest: a version move begins."""
        self.pool.set_target(version)
        self.changed()

    # -- an upgrade: the state the old master handed over (lb/core/handoff.py) -----------------
    def restore(self, state: dict, now: float) -> list[str]:
        """Lay the old master's state over the config, instead of the state file (which the old
        master wrote, and may have written a moment behind), before place_nodes. Returns what
        differs from the config."""
        said = []
        for name, saved in state["nodes"].items():
            node = self._restore_node(name, saved, state["generation"], now)
            if node is not None and (node.admin_state != READY or node.health != UP):
                said.append(f"{name} {node.admin_state}/{node.health}")
        self.pool.restore_order(state["versions"])      # the old order, oldest first
        if state.get("target") is not None:             # (an old master's handoff has none)
            self.set_target(state["target"])
        self.removing = {name for name in state["removing"] if name in self.pool.backends}
        for key, counts in state["pins"].items():
            self.pins[key] = Counter(counts)
        handoff.restore_pool_stats(self.stats, state["pool"])
        self.generation = state["generation"]           # the views go on from the old master's
        self.upgrades = state["upgrades"] + 1
        return said

    def _restore_node(self, name: str, saved: dict, generation: int, now: float) -> Node | None:
        """One node as the old master had it; None when it is gone from the config (the old
        workers finish with it)."""
        event = handoff.RESTORE[saved["state"]]
        node = self.pool.backends.get(name)
        if node is not None:
            transition(node, event, now)
        elif saved.get("added"):
            node = self.add_node(handoff.added_backend(name, saved), event)
        else:
            return None
        if node.admin_state == DRAINING:
            # it is drained by a report written under the new master's own first view
            self.drain_generation[name] = generation + 1
        self.set_version(node, saved["version"], pending=saved.get("version_pending", False))
        self.set_max_conns(node, saved["max_conns"])
        self.set_weight(node, saved["weight"])
        handoff.restore_node(node, saved, now)
        health.ramp(node, now, self.config.slow_start)
        return node

    def _drop_if_removed(self, node: Node) -> None:
        if node.name in self.removing and node.idle and node.admin_state != DRAINING:
            self.remove_node(node)

    def _drained(self, node: Node, event: str) -> None:
        transition(node, event, self.now())
        self.stats.drain_durations.append(self.now() - node.drain_started)
        self.drain_generation.pop(node.name, None)
        self._drop_if_removed(node)
        self.changed()

    # -- reports from the data plane -------------------------------------------------------
    def on_report(self, report: Report) -> None:
        self.reported_generation = report.generation
        self._reported.set()
        self._reported = asyncio.Event()
        for name, got in report.nodes.items():
            node = self.pool.backends.get(name)
            if node is None:
                continue
            node.inflight, node.tunnels = got.inflight, got.tunnels
            if not got.stats.empty:
                node.stats.merge(got.stats)
                node.requests += got.stats.requests
                node.errors += got.stats.errors
            for failed, count in got.outcomes:
                for _ in range(count):
                    self.passive(node, failed)
            self.passive_window(node, got.stats)
            if got.cut is not None:
                self._cut_done(node, got.cut)
        self.stats.failed.update(report.failed)
        self.stats.retries += report.retries
        if report.pins is not None:
            for key, counts in report.pins.items():
                self.pins[key].update(counts)
        if report.assets or report.skew:
            self.assets.learned(report.assets, report.skew)
            if report.assets:
                self._publish_assets()     # now, not at the next sweep: every worker routes by them
        self.clients = report.clients
        self.queued = report.queued
        for node in list(self.pool.backends.values()):
            # Once a cut was asked for, the drain ends with its answer (which may come after
            # the in-flight counts have dropped: with workers it waits for every one of them).
            if node.admin_state == DRAINING and node.idle and node.name not in self.cutting and \
                    self.reported_generation >= self.drain_generation.get(node.name, 0):
                self._drained(node, "idle")

    def _cut_done(self, node: Node, cut: int) -> None:
        self.cutting.discard(node.name)
        node.drain_cut = cut
        log.warning("drain of %s: deadline passed, %d requests/tunnels cut", node.name, cut)
        if node.admin_state == DRAINING:
            self._drained(node, "deadline")

    # -- health ---------------------------------------------------------------------------
    def apply_check(self, node: Node, ok: bool, version: str | None, drain: bool = False) -> None:
        """One active check's result (`drain`: the node asked to be drained)."""
        hc, now = self.config.health, self.now()
        outcome = health.apply_check(self.pool, node, ok, version, now, hc.rise, hc.fall, drain)
        for adoption in outcome.adopted:
            self._say_adopted(adoption)
        if outcome.kept and not node.hstate.drain_refused:
            log.warning("health: %s asks to be drained (its check answered %s), but it is the last node of %s "
                        "taking traffic: kept, so that %s's users are not sent elsewhere nor answered 503; "
                        "drain it with `drain %s` to take it out", node.name, node.hstate.last_check,
                        node.version, node.version, node.name)
        node.hstate.drain_refused = outcome.kept
        if outcome.changed:
            health.ramp(node, now, self.config.slow_start)   # from its first request on
            if node.health == VERSION_MISMATCH:
                self._say_mismatch(node, version, outcome.move)
            elif node.health == DRAIN_REQUESTED:
                log.warning("health: %s asked to be drained (its check answered %s): no new requests "
                            "go to it until health.rise checks pass in a row", node.name, node.hstate.last_check)
            else:
                log.info("health: %s is %s (last check %s)", node.name, node.health,
                         node.hstate.last_check)
        if outcome.changed or outcome.adopted:
            self.changed()

    def _fixes(self, name: str, version: str) -> str:
        """How to make lb's config say `version` for the node, or the running lb."""
        config = self.config
        index = next((i for i, b in enumerate(config.backends) if b.name == name), None)
        command = f"`lb ctl -s {config.resolve(config.admin.socket)} set version {name} {version}`"
        if index is None or config.backends[index].version == version:
            return f"run {command} (the config file needs no change)"
        return f"in {config.source}, set backends[{index}] ({name}) to `version: {version}`, or run {command}"

    def _configured(self, name: str) -> str:
        backend = self.config.backend(name)
        return backend.version if backend is not None else "(not in the config)"

    def _say_adopted(self, adoption) -> None:
        log.warning("VERSION ADOPTED: %s is labelled %s (configured %s) but its health check reports %s; "
                    "%s, so lb relabels it %s and it keeps serving. To make it so for good: %s "
                    "(`lb check --live` lists every such node)", adoption.name, adoption.labelled,
                    self._configured(adoption.name), adoption.reported, adoption.why, adoption.reported,
                    self._fixes(adoption.name, adoption.reported))

    def _say_mismatch(self, node: Node, reported: str | None, move: str | None) -> None:
        log.warning("health: %s is version_mismatch and gets no traffic: labelled %s (configured %s), its "
                    "health check reports %s, and a version move is in progress (%s). If %s is what it "
                    "should run, put %s on it; if %s is right: %s", node.name, node.version,
                    self._configured(node.name), reported, move or "?", node.version, node.version,
                    reported, self._fixes(node.name, reported))

    def passive(self, node: Node, failed: bool) -> None:
        """A proxied outcome: connect error or 5xx (failed), or a success after failures."""
        cfg = self.config.passive
        if health.record_response(node, failed, self.now(), cfg.failures, cfg.eject,
                                  self.pool.backends.values(), cfg.max_ejected):
            log.warning("passive: %s ejected for %.0fs after %d failures in a row", node.name,
                        node.hstate.ejected_until - self.now(), cfg.failures)
            self.changed()

    def passive_window(self, node: Node, delta) -> None:
        """A report's requests and failures into the node's failure-rate window."""
        cfg = self.config.passive
        served = delta.requests + delta.connect_errors
        if health.record_window(node, served, min(delta.errors, served), self.now(), cfg,
                                self.pool.backends.values()):
            log.warning("passive: %s ejected for %.0fs: %.0f%% or more of its requests failed over %.0fs",
                        node.name, node.hstate.ejected_until - self.now(), 100 * cfg.failure_rate, cfg.window)
            self.changed()

    # -- the sweeper: drain deadlines, ejections ending, slow-start ramps -----------------------
    def _sweep(self) -> None:
        try:
            self.tick(self.now())
        except Exception:
            log.exception("control sweep failed")
        finally:
            self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def tick(self, now: float) -> None:
        """What time alone changes: drain deadlines, ejections ending, slow-start ramps."""
        self._drain_deadlines(now)
        self._health_tick(now)
        self._publish_assets()

    def _publish_assets(self) -> None:
        update = self.assets.tick(time.time())
        if update is not None and self.link is not None:
            self.link.apply_assets(update)

    def _drain_deadlines(self, now: float) -> None:
        drain_s = self.config.drain.timeout
        for node in self.pool.backends.values():
            if node.admin_state == DRAINING and now >= node.drain_started + drain_s \
                    and node.name not in self.cutting:
                self.cutting.add(node.name)
                self.link.cut(node.name)

    def _health_tick(self, now: float) -> None:
        changed = bool(health.end_ejections(self.pool.backends.values(), now))
        for adoption in health.unstrand(self.pool, now):
            self._say_adopted(adoption)
            changed = True
        for node in self.pool.backends.values():
            if node.hstate.ramp_start is not None:
                health.ramp(node, now, self.config.slow_start)
                changed = True           # version capacities follow the ramp
        if changed:
            self.changed()

    # -- reload ---------------------------------------------------------------------------------
    def reload(self, new: Config) -> list[str]:
        """Apply a re-read config (see lb/core/reload.py); returns what changed."""
        running = {n.name: RunningNode(n.host, n.port, n.weight, n.version, n.max_conns)
                   for n in self.pool.backends.values()}
        changes = []
        for action in plan_reload(self.config, new, running, self.removing):
            said = self._RELOAD_ACTIONS[action.kind](self, action)
            if said or action.message:
                changes.append(said or action.message)
        self.config = running_config(new, self.config)
        self.assets.configure(self.config)
        self.link.apply_config(self.config)
        self.changed()
        return changes

    # Each returns what the reply says, when that differs from the action's message.
    def _reload_add(self, action) -> None:
        self.add_node(action.value)

    def _reload_address(self, action) -> None:
        self.set_address(self.pool.backends[action.name], action.value)

    def _reload_weight(self, action) -> None:
        self.set_weight(self.pool.backends[action.name], action.value)

    def _reload_max_conns(self, action) -> None:
        self.set_max_conns(self.pool.backends[action.name], action.value)

    def _reload_version(self, action) -> None:
        self.set_version(self.pool.backends[action.name], action.value)

    def _reload_keep(self, action) -> None:
        self.removing.discard(action.name)

    def _reload_remove(self, action) -> str | None:
        node = self.pool.backends[action.name]
        self.removing.add(action.name)
        if node.admin_state == READY:
            self.set_admin_state(node, "drain")
        self._drop_if_removed(node)
        if action.name in self.pool.backends:
            return action.message + " (draining; dropped when drained)"
        return None

    def _reload_nothing(self, action) -> None:
        pass                     # balance goes to the data plane with the config; the rest at restart

    _RELOAD_ACTIONS = {ADD: _reload_add, ADDRESS: _reload_address, WEIGHT: _reload_weight,
                       MAX_CONNS: _reload_max_conns,
                       VERSION: _reload_version, KEEP: _reload_keep, REMOVE: _reload_remove,
                       BALANCE: _reload_nothing, AT_RESTART: _reload_nothing}

