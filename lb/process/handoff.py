"""The hitless upgrade's two ends: a running master hands its sockets, state and traffic to a new one.

Theory of operation
-------------------
`upgrade` (the admin command, or SIGUSR2) makes the running master, the *old* one,
start a *new* master from the code and config on disk (`lb serve -c FILE
--upgrade-fd N`, N one end of a socketpair: the handoff channel). Over it:

1. old -> new: its stderr, the listening sockets and the /metrics socket, with
   SCM_RIGHTS (`socket.send_fds`), then ("handoff", state): the sockets' addresses,
   every node's admin state, version, weight, health, ejection, drain and counters,
   the version order, the pin and pool counters, and the generation of its last
   view (`snapshot`, lb/core/handoff.py). From the snapshot on the old control plane
   is frozen (lb/process/upgrade.py: its states): no checks, no sweeps, admin
   commands wait, its workers' reports are held.
2. The new master keeps the sockets its config names (it binds any other listener,
   and closes what it no longer wants), lays the state over its config (`Control.restore`),
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
   `Arbiter`), so a node drained after the upgrade waits for the requests of both
   generations of workers, and what the old workers serve counts in the new
   master's stats. Admin commands that reach the old master are relayed to the new
   one. When its last worker is gone, the old master exits; the channel's EOF tells
   the new master so.

Everything on the channel is builtins (dicts, lists, tuples, numbers, strings),
pickled: two versions of lb's code speak it, so no class of either crosses (the
wire forms: lb/core/handoff.py). Each side dispatches the kinds it hears from one
table (`FROM_NEW_MASTER`, `FROM_OLD_MASTER`) at the bottom of this file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections import deque

from ..core.errors import LbError
from ..core.handoff import FORMAT, first_report, known_format, report_from_wire, report_to_wire, view_from_wire, \
    view_to_wire
from ..core.planes import Report
from ..procs import start_lb_process
from .channel import Channel, open_channel

log = logging.getLogger("lb.upgrade")

START_TIMEOUT_S = 60.0          # for the new master to serve (its workers start in parallel)
MAX_FDS = 64
STDERR_TAIL = 20                # lines of the new master's stderr kept for the error message


class UpgradeFailed(LbError):
    """The new master did not start; the old one serves on."""


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
        handler = FROM_NEW_MASTER.get(kind)
        if handler is not None:
            handler(self, payload)

    def _on_serving(self, info: dict) -> None:
        if not self.serving.done():
            self.serving.set_result(info)

    def _on_error(self, why: str) -> None:
        if not self.serving.done():
            self.serving.set_exception(UpgradeFailed(why))

    # What the new master asks of the old workers; held until it serves (until then this
    # master's own control plane might still thaw and go on deciding for them).
    def _on_view(self, wire: dict) -> None:
        self._relay_in(lambda: self.workers.apply_view(view_from_wire(wire)))

    def _on_cut(self, name: str) -> None:
        self._relay_in(lambda: self.workers.cut(name))

    def _on_collect(self, _=None) -> None:
        workers = self.workers
        self._relay_in(lambda: workers.collect().add_done_callback(lambda _: workers.report_now()))

    def _relay_in(self, action) -> None:
        if self.serving.done():
            action()
        else:
            self.held.append(action)

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
        self.workers.send_reports_to(self.relay)
        held, self.held = self.held, []
        for action in held:
            action()

    def relay(self, report: Report) -> None:
        if self.channel is not None:
            self.channel.send("report", report_to_wire(report))

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
        handler = FROM_OLD_MASTER.get(kind)
        if handler is not None:
            handler(self, payload)

    def _on_handoff(self, state: dict) -> None:
        if not self._state_future.done():
            self._state_future.set_result(state)

    def _on_report(self, wire: dict) -> None:
        if self.predecessor is not None:
            self.predecessor.on_report(report_from_wire(wire))

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
    if not known_format(state):
        raise UpgradeFailed(f"the old master speaks handoff format {state.get('format')!r}; this lb knows "
                            f"{FORMAT}: stop and start lb instead")
    inherited.state = state
    return inherited


class _WireLink:
    """The predecessor's end of what the `Arbiter` sends its members, in the wire forms."""

    def __init__(self, inherited: Inherited):
        self.inherited = inherited

    def send(self, kind: str, payload=None) -> None:
        to_wire = TO_OLD_MASTER.get(kind)
        if to_wire is not None:
            self.inherited.send(kind, to_wire(payload))


class Predecessor:
    """The old master and its workers, as one member of the new master's `Arbiter`: views and
    cuts go to it, its merged reports come back, until its last worker is gone."""

    slot = -1
    ready = None                  # never one of the workers to start again

    def __init__(self, inherited: Inherited, workers):
        self.pid = inherited.state["pid"]
        self.first_report: Report = first_report(inherited.state)   # until it sends its own
        self.channel = _WireLink(inherited)
        self.workers = workers
        inherited.predecessor = self

    def on_report(self, report: Report) -> None:
        self.workers.member_report(self, report)

    def on_closed(self) -> None:
        log.info("the old master (pid %d) is gone", self.pid)
        self.workers.member_closed(self)


def _as_is(payload):
    return payload


# The message kinds of the handoff channel, one table per side. The old master hears from the
# new one (before it serves: "serving" or "error"; after: what the old workers are to do):
FROM_NEW_MASTER = {
    "serving": Successor._on_serving,
    "error": Successor._on_error,
    "view": Successor._on_view,
    "cut": Successor._on_cut,
    "collect": Successor._on_collect,
}
# The new master hears the old one's state, then its workers' merged reports:
FROM_OLD_MASTER = {
    "handoff": Inherited._on_handoff,
    "report": Inherited._on_report,
}
# What the new master's arbiter sends its predecessor, in the wire forms. Not "config", "stop" nor
# "reopen": the old workers keep their own settings and stop by themselves.
TO_OLD_MASTER = {
    "view": view_to_wire,
    "cut": _as_is,
    "collect": _as_is,
}
