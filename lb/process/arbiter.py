"""The arbiter: the worker processes, started, watched and started again, as one data plane.

In gunicorn's manner, one small class keeps the workers: `Arbiter` starts `count`
workers (`python -P -m lb.worker`, in /: lb/procs.py), each inheriting the
listening sockets the master bound and one end of a socketpair (channel.py); a
worker is sent the config and the current view, and is in service once it says
`ready`. A worker that exits is started again (after a second when it lived less
than one, so a crash loop does not spin); at a stop every worker is told to finish
what it carries, and is killed when it does not in time.

It is also the control plane's link (the interface of lb/core/planes.py): views,
reloads, cuts and collects go to every worker, and each worker's reports come back
merged into one `Report` by lb/core/merge.py (where the rules are) for whoever the
master names with `send_reports_to` (its `Control.on_report`; at an upgrade, held,
then the new master). After a hitless upgrade the old master is one more member
(`Predecessor`, handoff.py): views, cuts and collects go to it as to a worker, and
its reports are merged like a worker's until it is gone; it is never restarted.

What a worker says is dispatched from one table, `FROM_WORKER`, at the bottom.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field

from ..core.merge import ReportMerge, view_for
from ..core.planes import Report, RoutingView
from ..core.privileges import Identity
from ..core.skew import AssetMap
from ..procs import start_lb_process
from .channel import Channel, open_channel

log = logging.getLogger("lb.workers")
# The name a worker is started by is part of the upgrade's contract: a master starts its workers
# from the code on disk, which may already be the next version (before its upgrade) or the
# previous one again (a rollback), so it stays the name every version has (lb/worker.py).
WORKER_MODULE = "lb.worker"
START_TIMEOUT_S = 30.0
CRASH_LOOP_S = 1.0            # a worker that lived less than this is restarted after this
STOP_GRACE_S = 5.0            # after the drain timeout, before a worker is killed


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


class Arbiter:
    def __init__(self, config, loop: asyncio.AbstractEventLoop, listeners: list[socket.socket],
                 report_to, count: int, identity: Identity | None = None):
        self.config = config
        self.identity = identity              # whom a worker drops to once it serves (lb/core/privileges.py)
        self.loop = loop
        self.listeners = listeners
        self._report_to = report_to
        self.count = count
        self.view: RoutingView | None = None
        self.assets = AssetMap()              # the asset index as the workers hold it (lb/core/skew.py)
        self.slots: dict[int, Worker] = {}
        self.merge = ReportMerge()
        self.restarts = 0
        self.restarts_by_slot: Counter = Counter()
        self.stopping = False
        self._respawns: set[asyncio.Task] = set()
        self.predecessor = None               # the old master, after an upgrade, until it is gone
        self._predecessor_gone = asyncio.Event()

    def send_reports_to(self, report_to) -> None:
        """Whom the merged reports go to from now on (the master holds them at an upgrade)."""
        self._report_to = report_to

    # -- the workers: start, watch, start again, stop --------------------------------------
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
        proc = start_lb_process(WORKER_MODULE, [str(fd) for fd in fds], pass_fds=fds)
        child.close()
        worker = Worker(slot, proc, ready=self.loop.create_future())
        self.slots[slot] = worker
        worker.channel = await open_channel(parent, lambda kind, payload: self._on_message(worker, kind, payload),
                                            lambda: self._on_closed(worker))
        worker.channel.send("config", (self.config, slot, self.identity))
        worker.channel.send("view", view_for(self.view, self.count, slot))
        if self.assets.by_path or self.assets.retired:
            worker.channel.send("assets", self.assets.snapshot())
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), START_TIMEOUT_S)
        except (asyncio.TimeoutError, RuntimeError):
            proc.kill()
            raise RuntimeError(f"worker {slot} did not start (pid {proc.pid})") from None
        log.info("worker %d serving (pid %d)", slot, proc.pid)
        return worker

    def _on_message(self, worker: Worker, kind: str, payload) -> None:
        handler = FROM_WORKER.get(kind)
        if handler is not None:
            handler(self, worker, payload)

    def _on_ready(self, worker: Worker, pid: int) -> None:
        if not worker.ready.done():
            worker.ready.set_result(pid)

    def _on_closed(self, worker) -> None:
        if self.slots.get(worker.slot) is worker:
            del self.slots[worker.slot]
        if worker is self.predecessor:
            self.predecessor = None
            self._predecessor_gone.set()
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_exception(RuntimeError("exited before serving"))
            worker.ready.exception()          # retrieved: _spawn reports it
        merged = self.merge.gone(worker, self.view)
        if merged is not None:
            self._report_to(merged)          # its requests and tunnels died with it
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
        """The old master of an upgrade joins as a member (see the module's docstring), counting
        what its workers carried at the handoff until it reports."""
        self.predecessor = predecessor
        self._predecessor_gone.clear()
        self.merge.join(predecessor, predecessor.first_report)
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
            worker.channel.send("view", view_for(view, self.count, worker.slot))
        if self.predecessor is not None:
            self.predecessor.channel.send("view", view)      # it shares max_conns out itself

    def apply_assets(self, update) -> None:
        """The asset index's changes (skew protection); a worker started later gets it whole."""
        self.assets.apply(update)
        for worker in self.slots.values():
            worker.channel.send("assets", update)
        # Not to a predecessor: its workers only finish what they hold, with the index they have.

    def apply_config(self, config) -> None:
        self.config = config
        for worker in self.slots.values():
            worker.channel.send("config", (config, worker.slot, self.identity))

    def cut(self, name: str) -> None:
        members = self._members()
        done = self.merge.cut(name, members, self.view)
        for worker in members:
            worker.channel.send("cut", name)
        if done is not None:                 # nobody carries anything: the cut closed nothing
            self._report_to(done)

    def collect(self) -> asyncio.Future:
        """Ask every worker to report now; the future is done once each has."""
        done = self.loop.create_future()
        members = self._members()
        self.merge.collect(done, members)
        for worker in members:
            worker.channel.send("collect")
        self._finish_collects()
        return done

    def report_now(self) -> None:
        """Report what is true now (an old master answering its successor's collect)."""
        self._report_to(self.merge.now(self.view))

    def _on_report(self, worker, report: Report) -> None:
        self._report_to(self.merge.report(worker, report, self.view))
        self._finish_collects()

    def _finish_collects(self) -> None:
        for done in self.merge.collected():
            if not done.done():
                done.set_result(None)


# What a worker says (worker.py's `FROM_MASTER` is the other side):
FROM_WORKER = {
    "ready": Arbiter._on_ready,
    "report": Arbiter._on_report,
}


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
