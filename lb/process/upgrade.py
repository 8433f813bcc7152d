"""The old master's side of a hitless upgrade, as one object with its states in one table.

Theory of operation
-------------------
An upgrade (the `upgrade` command, or SIGUSR2) moves the master through:

    serving --freeze--> frozen --hand_over--> handed_over
                          |
                          +------thaw-------> thawed --freeze--> frozen ...

*frozen*: the control plane is stopped (no checks, no sweeps), the workers' reports
are held, a snapshot of the state goes to a new master (handoff.py) and admin
commands wait for the outcome. *handed_over*: the new master serves; the held
reports and everything after go to it, admin commands are relayed to its socket,
and this master retires once its workers are done. *thawed*: the new master did
not start; the held reports are applied, the control plane starts again, and this
master serves on exactly as before (and may be upgraded again).

Every move is a row of `TRANSITIONS`; a move not in it raises UpgradeRefused naming
the state and the event. `Upgrade` is also the one gate admin consults
(lb/control/admin.py): `frozen` (wait on `settled()`), `new_master` (relay there),
`handed_over` (a future: a `wait` in progress goes on at the new master).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
from typing import NamedTuple, Protocol

from ..core.errors import CommandError, LbError
from ..core.handoff import snapshot
from .handoff import Successor

log = logging.getLogger("lb")


class UpgradeState(enum.StrEnum):
    SERVING = "serving"
    FROZEN = "frozen"
    HANDED_OVER = "handed_over"
    THAWED = "thawed"


SERVING, FROZEN, HANDED_OVER, THAWED = UpgradeState

TRANSITIONS = {
    (SERVING, "freeze"): FROZEN,
    (THAWED, "freeze"): FROZEN,            # a failed upgrade may be tried again
    (FROZEN, "hand_over"): HANDED_OVER,
    (FROZEN, "thaw"): THAWED,
}
# What an operator is told when `upgrade` finds the master in a state it cannot freeze from.
REFUSALS = {
    FROZEN: "an upgrade is in progress already; its reply tells how it went",
    HANDED_OVER: "this master has handed over to a new one already",
}


class UpgradeRefused(CommandError):
    """A move the table does not have."""


def next_state(state: UpgradeState, event: str) -> UpgradeState:
    """The state `event` leads to from `state`. Raises UpgradeRefused when the table has no
    such move."""
    new = TRANSITIONS.get((state, event))
    if new is None:
        if event == "freeze" and state in REFUSALS:
            raise UpgradeRefused(REFUSALS[state])
        expected = sorted(from_ for from_, ev in TRANSITIONS if ev == event)
        raise UpgradeRefused(f"'{event}' expects an upgrade in {' or '.join(expected)}; it is {state}")
    return new


class NewMaster(NamedTuple):
    pid: int
    admin: str                  # its admin socket's path


class Host(Protocol):
    """What the upgrade needs of the master (serve.py's `Master`)."""

    control: object             # the control plane: stop(), start(), on_report(), now()
    workers: object             # the arbiter
    admin_server: object        # reclaim() the socket's path after a failure
    metrics: object | None      # close()d once the new master serves /metrics
    stop: asyncio.Event

    def successor_args(self) -> list[str]: ...

    def handed_sockets(self) -> list[socket.socket]: ...


class Upgrade:
    """The upgrade of one master, and the gate its admin commands pass."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: Host):
        self.loop = loop
        self.host = host
        self.state = SERVING
        self.new_master: NewMaster | None = None
        self.successor: Successor | None = None
        self.handed_over: asyncio.Future = loop.create_future()
        self._outcome: asyncio.Future | None = None     # while frozen

    # -- the gate ----------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return self.state == FROZEN

    async def settled(self) -> None:
        """Return once the upgrade in progress handed over or thawed."""
        if self._outcome is not None:
            await asyncio.shield(self._outcome)

    def _move(self, event: str) -> None:
        self.state = next_state(self.state, event)
        if self.state == FROZEN:
            self._outcome = self.loop.create_future()
        elif self._outcome is not None:
            self._outcome.set_result(None)          # the waiting commands go on (or are relayed)
            self._outcome = None

    # -- the procedure ------------------------------------------------------------------------
    async def run(self) -> dict:
        """Start a new master and hand it everything; the reply once it serves. Raises
        CommandError when it cannot start: this master then serves on as before."""
        host = self.host
        next_state(self.state, "freeze")            # refused before anything moves
        if host.stop.is_set():
            raise CommandError("lb is stopping; nothing to upgrade")
        self._move("freeze")                        # other commands wait for the outcome
        control, workers = host.control, host.workers
        held: list = []
        workers.send_reports_to(held.append)        # nothing is decided from here on
        await control.stop()
        state = snapshot(control, control.now(), os.getpid())
        successor = Successor(self.loop, workers, host.successor_args())
        log.info("upgrade: starting a new master")
        try:
            serving = await successor.start(state, host.handed_sockets())
        except Exception as exc:                    # whatever it was, this master must thaw
            why = await self._thaw(held, exc)
            raise CommandError(f"upgrade failed; lb (pid {os.getpid()}) serves on as before: {why}") from None
        await self._hand_over(successor, serving, held)
        log.info("upgrade: pid %d serves", serving["pid"])
        return {"upgrade": {"old_pid": os.getpid(), "new_pid": serving["pid"],
                            "upgrades": state["upgrades"] + 1, "workers": serving["workers"]}}

    async def _thaw(self, held: list, exc: Exception) -> str:
        """Serve on as before the upgrade; why it failed."""
        why = exc.message if isinstance(exc, LbError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, LbError):
            log.exception("upgrade: unexpected failure")
        host = self.host
        control = host.control
        host.workers.send_reports_to(control.on_report)
        for report in held:
            control.on_report(report)
        control.start()
        await host.admin_server.reclaim()       # had the new one taken the path, it is ours again
        self._move("thaw")
        log.error("upgrade failed, this master serves on: %s", why)
        return why

    async def _hand_over(self, successor: Successor, serving: dict, held: list) -> None:
        for report in held:
            successor.relay(report)
        successor.take_over()
        self.successor = successor
        self.new_master = NewMaster(serving["pid"], serving["admin"])
        self.handed_over.set_result(None)       # a `wait` in progress goes on at the new master
        self._move("hand_over")                 # the waiting commands go to the new master
        host = self.host
        if host.metrics is not None:
            await host.metrics.close()          # the new master serves /metrics on the socket
        host.stop.set()
