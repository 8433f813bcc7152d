"""The hitless upgrade: a running master hands its sockets, state and traffic to a new one.

Theory of operation
-------------------
`upgrade` (the admin command, or SIGUSR2) makes the running master, the *old* one,
start a *new* master from the code and config on disk (`lb serve -c FILE
--upgrade-fd N`, N one end of a socketpair: the handoff channel). Over it:

1. old -> new: its stderr, the listening sockets and the /metrics socket, with
   SCM_RIGHTS (`socket.send_fds`), then ("handoff", state): the sockets' addresses,
   every node's admin state, version, weight, health, ejection, drain and counters,
   the version order, the pin and pool counters, and the generation of its last
   view (`snapshot`). From the snapshot on the old control plane is frozen: no
   checks, no sweeps, admin commands wait, its workers' reports are held.
2. The new master keeps the sockets its config names (it binds any other listener,
   and closes what it no longer wants), lays the state over its config (`restore`),
   starts its workers on the sockets, takes the admin socket's path (bound under a
   temporary name and renamed over the old one: the path always answers) and
   /metrics, and says ("serving", ...). Until it takes the old one's stderr the new
   master writes to a pipe the old one reads: an import error, a bad config or a
   port in use comes back as the reason the upgrade failed, and the old master
   thaws and serves on as if nothing had happened.
3. On "serving" the old master becomes the new one's *predecessor*: its workers stop
   accepting (the new ones accept on the same sockets: nothing queued is lost) and
   finish what they carry. It relays the new master's views and cuts to them and
   their reports back (`Predecessor`, one more member of the new master's
   `Workers`), so a node drained after the upgrade waits for the requests of both
   generations of workers, and what the old workers serve counts in the new
   master's stats. Admin commands that reach the old master are relayed to the new
   one. When its last worker is gone, the old master exits; the channel's EOF tells
   the new master so.

Everything on the channel is builtins (dicts, lists, tuples, numbers, strings),
pickled: two versions of lb's code speak it, so no class of either crosses.
`FORMAT` names the layout; a new master that does not know the old one's refuses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import subprocess
import sys
from collections import Counter, deque

from ..channel import Channel, open_channel
from ..core import health
from ..core.commands import backend_config
from ..core.errors import LbError
from ..core.nodes import DRAINED, DRAINING, MAINT, READY, Health, Node, transition
from ..core.planes import NodeReport, NodeView, Report, RoutingView
from ..core.stats import StatsDelta
from ..procs import start_lb_process

log = logging.getLogger("lb.upgrade")

FORMAT = 1
START_TIMEOUT_S = 60.0          # for the new master to serve (its workers start in parallel)
MAX_FDS = 64
STDERR_TAIL = 20                # lines of the new master's stderr kept for the error message
NODE_VIEW_FIELDS = tuple(f.name for f in dataclasses.fields(NodeView))
RESTORE = {READY: "start", DRAINING: "restore_draining", DRAINED: "restore_drained", MAINT: "restore_maint"}


class UpgradeFailed(LbError):
    """The new master did not start; the old one serves on."""


# -- the wire forms: builtins only --------------------------------------------------------------

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


def snapshot(control, now: float) -> dict:
    """The control plane's runtime state, for the new master. Times are ages (seconds
    before `now`), not clock readings."""
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
    return {"format": FORMAT, "pid": os.getpid(), "generation": control.generation,
            "upgrades": control.upgrades, "versions": list(control.pool.versions), "nodes": nodes,
            "target": control.pool.target,
            "removing": sorted(control.removing), "clients": control.clients,
            "pins": {key: dict(counts) for key, counts in control.pins.items()},
            "pool": {"failed": dict(pool_stats.failed), "retries": pool_stats.retries,
                     "drains": pool_stats.drains, "drain_durations": list(pool_stats.drain_durations),
                     "since": pool_stats.since}}


def restore(control, state: dict, now: float) -> list[str]:
    """Lay the old master's state over the config, instead of the state file (which the old
    master wrote, and may have written a moment behind), before place_nodes. Returns what
    differs from the config."""
    pool, said = control.pool, []
    for name, saved in state["nodes"].items():
        node = pool.backends.get(name)
        if node is None and saved.get("added"):
            node = Node(backend_config({"name": name, "address": saved["address"], "version": saved["version"],
                                        "weight": saved["weight"]}), saved["stats"]["since"])
            pool.backends[name] = node
        if node is None:
            continue                        # gone from the config: the old workers finish with it
        transition(node, RESTORE[saved["state"]], now)
        if saved["drain_age"] is not None:
            node.drain_started = now - saved["drain_age"]
            control.drain_generation[name] = state["generation"] + 1    # the new master's first view
        pool.relabel(node, saved["version"], pending=saved.get("version_pending", False))
        node.max_conns, node.drain_cut = saved["max_conns"], saved["drain_cut"]
        node.set_weight(saved["weight"])
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
        health.ramp(node, now, control.config.slow_start)
        stats, got = node.stats, saved["stats"]
        stats.by_class, stats.histogram, stats.histogram_sum = got["by_class"], got["histogram"], got["histogram_sum"]
        stats.retries, stats.connect_errors, stats.lb_failures = got["retries"], got["connect_errors"], got["lb_failures"]
        stats.since = got["since"]
        stats.window.load(got["window"])
        if node.admin_state != READY or node.health != "up":
            said.append(f"{name} {node.admin_state}/{node.health}")
    pool.restore_order(state["versions"])      # the old order, oldest first
    if state.get("target") is not None:       # (an old master's handoff has none)
        pool.set_target(state["target"])
    control.removing = {name for name in state["removing"] if name in pool.backends}
    for key, counts in state["pins"].items():
        control.pins[key] = Counter(counts)
    pool_stats, got = control.stats, state["pool"]
    pool_stats.failed, pool_stats.retries = Counter(got["failed"]), got["retries"]
    pool_stats.drains, pool_stats.drain_durations = got["drains"], list(got["drain_durations"])
    pool_stats.since = got["since"]
    control.generation = state["generation"]
    control.upgrades = state["upgrades"] + 1
    return said


def first_report(state: dict) -> Report:
    """What the old workers carry at the handoff, as the predecessor's report until it sends
    its own: the new master counts their requests from the first moment."""
    return Report(state["generation"], {
        name: NodeReport(saved["inflight"], saved["tunnels"], StatsDelta())
        for name, saved in state["nodes"].items()}, Counter(), 0, None, state["clients"])


# -- the old master's side ------------------------------------------------------------------------

class Successor:
    """The new master, as the old one starts it and then serves it: `start()` returns once it
    serves (or raises UpgradeFailed); from then on its views, cuts and collects go to the
    old workers and their reports back (`relay`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workers, config_args: list[str]):
        self.loop = loop
        self.workers = workers
        self.config_args = config_args      # `lb serve`'s arguments naming the config (absolute)
        self.proc: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.serving: asyncio.Future = loop.create_future()
        self.held: list = []                # what the new master said before it served
        self.stderr_tail: deque = deque(maxlen=STDERR_TAIL)
        self.closing = False

    async def start(self, state: dict, sockets: list[socket.socket]) -> dict:
        ours, theirs = socket.socketpair()
        argv = ["serve", *self.config_args, "--upgrade-fd", str(theirs.fileno())]
        try:
            self.proc = start_lb_process("lb.cli", argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        except OSError as exc:
            ours.close()
            raise UpgradeFailed(f"cannot start a new master: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        reader = self.loop.run_in_executor(None, self._read_stderr, self.proc.stderr)
        try:
            socket.send_fds(ours, [b"F"], [sys.stderr.fileno(), *(s.fileno() for s in sockets)])
            self.channel = await open_channel(ours, self._on_message, self._on_closed)
            self.channel.send("handoff", state)
            return await asyncio.wait_for(asyncio.shield(self.serving), START_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, UpgradeFailed, _Exited) as exc:
            await self._failed(reader)
            if isinstance(exc, UpgradeFailed):
                raise
            if isinstance(exc, _Exited):
                tail = [line for line in self.stderr_tail if line.strip()]
                raise UpgradeFailed(f"the new master exited with code {self.proc.returncode}"
                                    + (f": {tail[-1]}" if tail else "")) from None
            why = f"did not serve in {START_TIMEOUT_S:.0f}s" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            raise UpgradeFailed(f"the new master {why}") from None

    async def _failed(self, reader) -> None:
        """Whatever went wrong, the new master is gone (and reaped) and its stderr read."""
        if self.channel is not None:
            self.channel.close()
        try:
            await asyncio.wait_for(self.loop.run_in_executor(None, self.proc.wait), 5.0)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.loop.run_in_executor(None, self.proc.wait)
        await reader

    def _read_stderr(self, pipe) -> None:
        """Echo the new master's stderr to ours until it takes ours over (or exits)."""
        for line in iter(pipe.readline, b""):
            text = line.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(text)
            print(text, file=sys.stderr, flush=True)
        pipe.close()

    def _on_message(self, kind: str, payload) -> None:
        if kind == "serving":
            if not self.serving.done():
                self.serving.set_result(payload)
        elif kind == "error":
            if not self.serving.done():
                self.serving.set_exception(UpgradeFailed(payload))
        elif not self.serving.done():
            self.held.append((kind, payload))
        else:
            self._relay_in(kind, payload)

    def _on_closed(self) -> None:
        if not self.serving.done():
            self.serving.set_exception(_Exited())     # why: its exit code and stderr, once read
            self.serving.exception()
        elif not self.closing and self.serving.exception() is None:
            log.error("the new master (pid %d) is gone; the old workers finish without it", self.proc.pid)

    # -- after it serves: the old workers answer to it --------------------------------------
    def take_over(self) -> None:
        """The new master serves: its views, cuts and collects reach the old workers from now
        on, and their reports go to it."""
        self.workers.report_to = self.relay
        for kind, payload in self.held:
            self._relay_in(kind, payload)
        self.held = []

    def relay(self, report: Report) -> None:
        if self.channel is not None:
            self.channel.send("report", report_to_wire(report))

    def _relay_in(self, kind: str, payload) -> None:
        workers = self.workers
        if kind == "view":
            workers.apply_view(view_from_wire(payload))
        elif kind == "cut":
            workers.cut(payload)
        elif kind == "collect":
            workers.collect().add_done_callback(lambda _: workers.report_now())

    def close(self) -> None:
        self.closing = True
        if self.channel is not None:
            self.channel.close()


class _Exited(Exception):
    """The new master closed the handoff channel before it served."""


# -- the new master's side ------------------------------------------------------------------------

class Inherited:
    """What the new master got: the sockets by address, the old master's state, and the
    channel that becomes its predecessor's link."""

    def __init__(self, sockets: list[socket.socket]):
        self.sockets = sockets
        self.state: dict | None = None
        self.channel: Channel | None = None
        self.predecessor: Predecessor | None = None
        self._state_future: asyncio.Future | None = None

    def send(self, kind: str, payload) -> None:
        if self.channel is not None:
            self.channel.send(kind, payload)

    def _on_message(self, kind: str, payload) -> None:
        if kind == "handoff" and not self._state_future.done():
            self._state_future.set_result(payload)
        elif kind == "report" and self.predecessor is not None:
            self.predecessor.on_report(report_from_wire(payload))

    def _on_closed(self) -> None:
        if not self._state_future.done():
            self._state_future.set_exception(UpgradeFailed("the old master closed the handoff channel"))
        if self.predecessor is not None:
            self.predecessor.on_closed()


async def receive(fd: int) -> Inherited:
    """The new master's first step: take the old master's stderr and sockets, then its state.
    Raises UpgradeFailed."""
    sock = socket.socket(fileno=fd)
    try:
        _, fds, _, _ = socket.recv_fds(sock, 1, MAX_FDS)
    except OSError as exc:
        raise UpgradeFailed(f"no sockets from the old master: {exc.strerror or exc}") from None
    if not fds:
        raise UpgradeFailed("the old master sent no sockets")
    sys.stderr.flush()
    os.dup2(fds[0], 2)                  # from here on our errors are in the old master's log
    os.close(fds[0])
    sockets = []
    for fd_ in fds[1:]:
        received = socket.socket(fileno=fd_)
        received.setblocking(False)
        received.set_inheritable(True)
        sockets.append(received)
    inherited = Inherited(sockets)
    loop = asyncio.get_running_loop()
    inherited._state_future = loop.create_future()
    inherited.channel = await open_channel(sock, inherited._on_message, inherited._on_closed)
    state = await asyncio.wait_for(inherited._state_future, 30.0)
    if state.get("format") != FORMAT:
        raise UpgradeFailed(f"the old master speaks handoff format {state.get('format')!r}; this lb knows "
                            f"{FORMAT}: stop and start lb instead")
    inherited.state = state
    return inherited


class _WireLink:
    """The predecessor's end of what `Workers` sends its members, in the wire forms."""

    def __init__(self, inherited: Inherited):
        self.inherited = inherited

    def send(self, kind: str, payload=None) -> None:
        if kind == "view":
            self.inherited.send("view", view_to_wire(payload))
        elif kind in ("cut", "collect"):
            self.inherited.send(kind, payload)
        # "config", "stop", "reopen": the old workers keep their own settings and stop by themselves


class Predecessor:
    """The old master and its workers, as one member of the new master's `Workers`: views and
    cuts go to it, its merged reports come back, until its last worker is gone."""

    slot = -1
    ready = None                  # never one of the workers to start again

    def __init__(self, inherited: Inherited, workers):
        self.pid = inherited.state["pid"]
        self.report: Report | None = first_report(inherited.state)
        self.channel = _WireLink(inherited)
        self.workers = workers
        inherited.predecessor = self

    def on_report(self, report: Report) -> None:
        self.workers.member_report(self, report)

    def on_closed(self) -> None:
        log.info("the old master (pid %d) is gone", self.pid)
        self.workers.member_closed(self)
