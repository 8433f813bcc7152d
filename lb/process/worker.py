"""A worker process: the data plane on listening sockets inherited from the master.

Started by the master (arbiter.py) as `python -P -m lb.worker CHANNEL_FD LISTENER_FD...`
(lb/worker.py: the name every version has). Everything else comes over the channel
(channel.py): first the config and the routing view, then views, reloads, cuts and
collects as they happen; the worker sends its data plane's reports back. It decides nothing about
node state. Started as root with `user:` set, it drops to that user once it holds its
sockets and its access log file, before it accepts a connection (lb/core/privileges.py).

The worker never outlives its master: EOF on the channel (the master exited or
was killed) stops it within ORPHAN_GRACE_S. SIGTERM from the master's
`("stop", timeout)` or from an operator is a graceful stop (lb/proxy/dataplane.py:
`shutdown`); SIGINT and SIGHUP, which a terminal sends to the whole process group,
and SIGUSR1/SIGUSR2, which `systemctl kill` sends to every process of the unit, are
left to the master, which tells the workers what to do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from .. import privileges, tls
from ..proxy.accesslog import AccessLog
from ..proxy.dataplane import DataPlane
from .channel import open_channel

log = logging.getLogger("lb.worker")
ORPHAN_GRACE_S = 2.0          # how long connections get when the master is gone


class WorkerProcess:
    """One worker's life: what the master says (`FROM_MASTER`), before and after its data
    plane exists, and its stop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.started = asyncio.Event()    # the config and the first view came, or a stop did
        self.stop = asyncio.Event()
        self.stop_timeout = ORPHAN_GRACE_S
        self.config = None
        self.view = None
        self.slot = 0
        self.identity = None
        self.data: DataPlane | None = None
        self.early: list = []             # what came before the data plane existed, replayed in order
        self.channel = None

    def on_message(self, kind: str, payload) -> None:
        handler = FROM_MASTER.get(kind)
        if handler is not None:
            handler(self, payload)

    def _on_stop(self, timeout_s: float) -> None:
        self.stop_timeout = timeout_s
        self.stop.set()
        self.started.set()

    def _on_config(self, payload) -> None:
        if self.data is None and self.config is None:
            self.config, self.slot, self.identity = payload
        else:
            self._apply(lambda data: data.apply_config(payload[0]))

    def _on_view(self, view) -> None:
        if self.data is None and self.view is None:
            self.view = view
            self.started.set()
        else:
            self._apply(lambda data: data.apply_view(view))

    def _on_cut(self, name: str) -> None:
        self._apply(lambda data: data.cut(name))

    def _on_assets(self, update) -> None:
        self._apply(lambda data: data.apply_assets(update))

    def _on_collect(self, _=None) -> None:
        self._apply(lambda data: data.collect())

    def _on_reopen(self, _=None) -> None:
        self._apply(lambda data: data.access_log.reopen())

    def _apply(self, action) -> None:
        if self.data is None:
            self.early.append(action)
        else:
            action(self.data)

    def on_closed(self) -> None:
        if not self.stop.is_set():
            log.warning("worker %d: the master is gone; stopping", self.slot)
            self.stop_timeout = min(ORPHAN_GRACE_S, self.stop_timeout)
            self.stop.set()
            self.started.set()

    async def run(self, channel_fd: int, listener_fds: list[int]) -> int:
        sock = socket.socket(fileno=channel_fd)
        channel = self.channel = await open_channel(sock, self.on_message, self.on_closed)
        self.loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        await self.started.wait()
        if self.config is None or self.view is None:
            return 1               # stopped, or the master went away, before it said what to serve
        data, access_log = self._data_plane()
        listeners = [socket.socket(fileno=fd) for fd in listener_fds]
        if self.identity is not None:         # holding its sockets and log file; before any client
            tls.prepare(self.config)
            drop_privileges(self.identity, self.slot)
        await data.start(listeners)
        channel.send("ready", os.getpid())
        await self.stop.wait()
        timeout = self.stop_timeout
        await data.shutdown(timeout, min(data.config.drain.client_grace, timeout))
        access_log.close()
        channel.close()
        return 0

    def _data_plane(self) -> tuple[DataPlane, AccessLog]:
        config = self.config
        access_log = AccessLog(config.access_log if config.access_log in ("stdout", "off")
                               else config.resolve(config.access_log), worker=self.slot)
        data = DataPlane(config, self.loop, access_log, lambda report: self.channel.send("report", report))
        data.apply_view(self.view)
        for action in self.early:
            action(data)
        self.data, self.early = data, []
        return data, access_log


# What the master says (arbiter.py's `FROM_WORKER` is the other side); the payloads are in
# channel.py's docstring.
FROM_MASTER = {
    "config": WorkerProcess._on_config,
    "view": WorkerProcess._on_view,
    "cut": WorkerProcess._on_cut,
    "assets": WorkerProcess._on_assets,
    "collect": WorkerProcess._on_collect,
    "reopen": WorkerProcess._on_reopen,
    "stop": WorkerProcess._on_stop,
}


async def run(channel_fd: int, listener_fds: list[int]) -> int:
    return await WorkerProcess(asyncio.get_running_loop()).run(channel_fd, listener_fds)


def drop_privileges(identity, worker: int) -> None:
    """Become `user:` for good: the certificates come as bytes from the master, so nothing
    after this needs root. Raises OSError (the worker then fails to start, loudly)."""
    privileges.drop(identity)
    log.info("worker %d runs as %s (uid %d, gid %d)", worker, identity.user, identity.uid, identity.gid)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the master decides (a terminal's ^C)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)     # the master relays them (`systemctl kill`
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)     # signals every process of the unit)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from ..loop import run_async
    fds = [int(a) for a in argv]
    return run_async(run(fds[0], fds[1:]))

