"""The worker processes, as the control plane sees them: one data plane made of many.

`Workers` is the control plane's link (the interface of lb/core/planes.py) when the
data plane runs in worker processes, and their supervisor:

- it starts `count` workers (`python -P -m lb.worker`, in /: lb/procs.py), each
  inheriting the listening sockets the master bound and one end of a socketpair
  (lb/channel.py); a worker is sent the config and the current view, and is in
  service once it says `ready`;
- views, reloads, cuts and collects go to every worker; each worker's reports come
  back and are merged into one `Report` for `Control.on_report`: what was served
  (stats, outcomes, failures, retries, pins) passes through as it comes, since deltas
  add up; what is true now (in flight and tunnels per node, clients, queued) is the
  sum of every live worker's latest report; the report's generation is the oldest
  any live worker has applied, so a drain completes only when every worker has
  reported nothing in flight under the view that took the node out; a cut completes
  when every worker that was asked has answered, with the sum of what they closed;
- a worker that exits is started again (after a second when it lived less than one,
  so a crash loop does not spin), and what it reported is dropped with it: its
  connections died with it;
- after a hitless upgrade the old master is one more member (`Predecessor`,
  lb/control/handoff.py): views, cuts and collects go to it as to a worker, and its
  reports are merged like a worker's until it is gone; it is never restarted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field

from ..channel import Channel, open_channel
from ..core.planes import NodeReport, Report, RoutingView
from ..core.privileges import Identity
from ..core.stats import StatsDelta
from ..procs import start_lb_process

log = logging.getLogger("lb.workers")
START_TIMEOUT_S = 30.0
CRASH_LOOP_S = 1.0            # a worker that lived less than this is restarted after this
STOP_GRACE_S = 5.0            # after the drain timeout, before a worker is killed
COLLECT_TIMEOUT_S = 1.0


def worker_count(configured: int) -> int:
    """`workers: auto` (0) is the CPUs this process may run on."""
    return configured or len(os.sched_getaffinity(0))


@dataclass(eq=False)
class Worker:
    slot: int
    proc: subprocess.Popen
    channel: Channel | None = None
    started: float = field(default_factory=time.time)
    ready: asyncio.Future | None = None
    report: Report | None = None          # the latest, for the counts that are true now


class Workers:
    def __init__(self, config, loop: asyncio.AbstractEventLoop, listeners: list[socket.socket],
                 report_to, count: int, identity: Identity | None = None):
        self.config = config
        self.identity = identity              # whom a worker drops to once it serves (lb/core/privileges.py)
        self.loop = loop
        self.listeners = listeners
        self.report_to = report_to
        self.count = count
        self.view: RoutingView | None = None
        self.slots: dict[int, Worker] = {}
        self.restarts = 0
        self.restarts_by_slot: Counter = Counter()
        self.stopping = False
        self._cuts: dict[str, tuple[set[int], list[int]]] = {}   # name -> (slots to answer, [cut])
        self._collects: list[tuple[set[int], asyncio.Future]] = []
        self._respawns: set[asyncio.Task] = set()
        self.predecessor = None               # the old master, after an upgrade, until it is gone
        self._predecessor_gone = asyncio.Event()

    # -- supervision ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker; return once all serve. Raises RuntimeError when one cannot."""
        try:
            await asyncio.gather(*(self._spawn(slot) for slot in range(self.count)))
        except RuntimeError:
            await self.shutdown(0)
            raise

    async def _spawn(self, slot: int) -> Worker:
        parent, child = socket.socketpair()
        fds = [child.fileno()] + [sock.fileno() for sock in self.listeners]
        proc = start_lb_process("lb.worker", [str(fd) for fd in fds], pass_fds=fds)
        child.close()
        worker = Worker(slot, proc, ready=self.loop.create_future())
        self.slots[slot] = worker
        worker.channel = await open_channel(parent, lambda kind, payload: self._on_message(worker, kind, payload),
                                            lambda: self._on_closed(worker))
        worker.channel.send("config", (self.config, slot, self.identity))
        worker.channel.send("view", self.view_for(slot))
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), START_TIMEOUT_S)
        except (asyncio.TimeoutError, RuntimeError):
            proc.kill()
            raise RuntimeError(f"worker {slot} did not start (pid {proc.pid})") from None
        log.info("worker %d serving (pid %d)", slot, proc.pid)
        return worker

    def _on_message(self, worker: Worker, kind: str, payload) -> None:
        if kind == "report":
            self._on_report(worker, payload)
        elif kind == "ready" and not worker.ready.done():
            worker.ready.set_result(payload)

    def _on_closed(self, worker) -> None:
        if self.slots.get(worker.slot) is worker:
            del self.slots[worker.slot]
        if worker is self.predecessor:
            self.predecessor = None
            self._predecessor_gone.set()
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_exception(RuntimeError("exited before serving"))
            worker.ready.exception()          # retrieved: _spawn reports it
        cuts = {}
        for name in list(self._cuts):
            total = self._cut_answered(name, worker.slot, 0)
            if total is not None:
                cuts[name] = total
        if worker.report is not None or cuts:
            self._report_now(cuts)           # its requests and tunnels died with it
        for waiting, done in self._collects:
            waiting.discard(worker.slot)
        self._finish_collects()
        served = worker.ready is not None and worker.ready.done() and not worker.ready.exception()
        if served and not self.stopping:          # one that never served is its spawner's to retry
            task = self.loop.create_task(self._replace(worker))
            self._respawns.add(task)
            task.add_done_callback(self._respawns.discard)

    async def _replace(self, worker: Worker) -> None:
        code = await self.loop.run_in_executor(None, _reap, worker.proc)
        self.restarts += 1
        self.restarts_by_slot[worker.slot] += 1
        lived = time.time() - worker.started
        log.error("worker %d (pid %d) exited (%s) after %.1fs; starting it again", worker.slot,
                  worker.proc.pid, _how(code), lived)
        if lived < CRASH_LOOP_S:
            await asyncio.sleep(CRASH_LOOP_S)
        while not self.stopping:
            try:
                await self._spawn(worker.slot)
                return
            except (RuntimeError, OSError) as exc:
                log.error("worker %d: %s; trying again in %.0fs", worker.slot, exc, CRASH_LOOP_S)
                await asyncio.sleep(CRASH_LOOP_S)

    def info(self) -> list[dict]:
        return [{"worker": w.slot, "pid": w.proc.pid, "started": round(w.started, 3),
                 "restarts": self.restarts_by_slot[w.slot]}
                for w in sorted(self.slots.values(), key=lambda w: w.slot)]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self.listeners]

    def adopt(self, predecessor) -> None:
        """The old master of an upgrade joins as a member (see the module's docstring)."""
        self.predecessor = predecessor
        self._predecessor_gone.clear()
        if self.view is not None:
            predecessor.channel.send("view", self.view)

    def member_report(self, member, report: Report) -> None:
        self._on_report(member, report)

    def member_closed(self, member) -> None:
        self._on_closed(member)

    def _members(self) -> list:
        members = list(self.slots.values())
        if self.predecessor is not None:
            members.append(self.predecessor)
        return members

    def reopen_logs(self) -> None:
        for worker in self.slots.values():
            worker.channel.send("reopen")

    async def shutdown(self, timeout_s: float) -> None:
        """Every worker stops accepting and finishes what it carries (up to timeout_s); so does
        the old master of an upgrade, whose requests count here until it is gone."""
        self.stopping = True
        for task in list(self._respawns):
            task.cancel()
        procs = [w.proc for w in self.slots.values()]
        for worker in list(self.slots.values()):
            worker.channel.send("stop", timeout_s)
        # Our copies of the listening sockets go now: with the workers' gone too, the kernel
        # stops queueing connections nobody would accept (they are refused, not left to hang),
        # unless a new master (an upgrade) or systemd (socket activation) holds them still.
        for sock in self.listeners:
            sock.close()
        for proc in procs:
            left = timeout_s + STOP_GRACE_S
            code = await self.loop.run_in_executor(None, _reap, proc, left)
            if code is None:
                log.error("worker pid %d did not stop in %.0fs; killed", proc.pid, left)
        if self.predecessor is not None:
            try:
                await asyncio.wait_for(self._predecessor_gone.wait(), timeout_s + STOP_GRACE_S)
            except asyncio.TimeoutError:
                log.error("the old master (pid %d) is still finishing; stopping without it",
                          self.predecessor.pid)

    # -- the link: what the control plane calls -------------------------------------------
    def apply_view(self, view: RoutingView) -> None:
        self.view = view
        for worker in self.slots.values():
            worker.channel.send("view", self.view_for(worker.slot))
        if self.predecessor is not None:
            self.predecessor.channel.send("view", view)      # it shares max_conns out itself

    def view_for(self, slot: int) -> RoutingView | None:
        """The view as one worker applies it: a node's max_conns is lb's, shared out among the
        workers (each at least 1, or a worker would queue every request for that node)."""
        view = self.view
        if view is None or self.count == 1 or not any(n.max_conns for n in view.nodes):
            return view
        return dataclasses.replace(view, nodes=tuple(
            dataclasses.replace(n, max_conns=share(n.max_conns, self.count, slot)) if n.max_conns else n
            for n in view.nodes))

    def apply_config(self, config) -> None:
        self.config = config
        for worker in self.slots.values():
            worker.channel.send("config", (config, worker.slot, self.identity))

    def cut(self, name: str) -> None:
        members = self._members()
        live = {w.slot for w in members}
        self._cuts[name] = (live, [0])
        for worker in members:
            worker.channel.send("cut", name)
        if not live:                        # nobody carries anything: the cut closed nothing
            self._report_now({name: self._cut_answered(name, None, 0)})

    def collect(self) -> asyncio.Future:
        """Ask every worker to report now; the future is done once each has."""
        done = self.loop.create_future()
        members = self._members()
        self._collects.append(({w.slot for w in members}, done))
        for worker in members:
            worker.channel.send("collect")
        self._finish_collects()
        return done

    # -- reports --------------------------------------------------------------------------
    def _on_report(self, worker, report: Report) -> None:
        worker.report = report
        deltas = {}
        for name, got in report.nodes.items():
            cut = self._cut_answered(name, worker.slot, got.cut) if got.cut is not None else None
            deltas[name] = (got.stats, got.outcomes, cut)
        self._send_merged(deltas, report.failed, report.retries, report.pins)
        for waiting, done in self._collects:
            waiting.discard(worker.slot)
        self._finish_collects()

    def _cut_answered(self, name: str, slot: int | None, cut: int) -> int | None:
        """Count one worker's answer to a cut; the total once every asked worker answered."""
        pending = self._cuts.get(name)
        if pending is None:
            return None
        waiting, total = pending
        waiting.discard(slot)
        total[0] += cut
        if waiting:
            return None
        del self._cuts[name]
        return total[0]

    def report_now(self) -> None:
        """Report what is true now (an old master answering its successor's collect)."""
        self._report_now({})

    def _report_now(self, cuts: dict[str, int]) -> None:
        """A report of what is true now over the live workers, with no deltas (after a worker
        exited), carrying the cuts that completed."""
        names = {name for w in self._members() if w.report is not None for name in w.report.nodes}
        names |= set(cuts) | ({n.name for n in self.view.nodes} if self.view is not None else set())
        self._send_merged({name: (StatsDelta(), [], cuts.get(name)) for name in names}, Counter(), 0, None)

    def _send_merged(self, deltas: dict, failed: Counter, retries: int, pins) -> None:
        """One report for the control plane: per node, what is true now (in flight, tunnels)
        summed over every live worker's latest report, with `deltas` (name -> stats, outcomes,
        cut); the pool-wide deltas pass through, clients and queued are sums."""
        live = [w.report for w in self._members() if w.report is not None]
        generation = min((r.generation for r in live), default=self.view.generation if self.view else 0)
        nodes = {name: NodeReport(sum(r.nodes[name].inflight for r in live if name in r.nodes),
                                  sum(r.nodes[name].tunnels for r in live if name in r.nodes), *delta)
                 for name, delta in deltas.items()}
        self.report_to(Report(generation, nodes, failed, retries, pins,
                              sum(r.clients for r in live), sum(r.queued for r in live)))

    def _finish_collects(self) -> None:
        keep = []
        for waiting, done in self._collects:
            if waiting:
                keep.append((waiting, done))
            elif not done.done():
                done.set_result(None)
        self._collects = keep


def share(total: int, workers: int, slot: int) -> int:
    """Worker `slot`'s part of a cap of `total` split among `workers` (at least 1)."""
    return max(1, total // workers + (1 if slot < total % workers else 0))


def _reap(proc: subprocess.Popen, timeout_s: float = 10.0) -> int | None:
    """Wait for a worker to exit (killing it after timeout_s); its exit code, None if killed."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def _how(code: int | None) -> str:
    if code is None:
        return "killed after not stopping"
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"
