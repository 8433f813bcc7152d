"""A worker process: the data plane on listening sockets inherited from the master.

Started by the master (lb/control/workers.py) as `python -P -m lb.worker CHANNEL_FD
LISTENER_FD...`. Everything else comes over the channel (lb/channel.py): first the
config and the routing view, then views, reloads, cuts and collects as they
happen; the worker sends its data plane's reports back. It decides nothing about
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
import sys

from . import privileges
from .channel import open_channel
from .proxy.accesslog import AccessLog
from .proxy.dataplane import DataPlane

log = logging.getLogger("lb.worker")
ORPHAN_GRACE_S = 2.0          # how long connections get when the master is gone


async def run(channel_fd: int, listener_fds: list[int]) -> int:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    stop = asyncio.Event()
    state: dict = {"data": None, "stop_timeout": ORPHAN_GRACE_S, "config": None, "view": None,
                   "worker": 0, "identity": None}

    early: list = []               # what came before the data plane existed, replayed in order

    def on_message(kind: str, payload) -> None:
        data = state["data"]
        if kind == "stop":
            state["stop_timeout"] = payload
            stop.set()
            started.set()
        elif data is None:
            if kind == "config" and state["config"] is None:
                state["config"], state["worker"], state["identity"] = payload
            elif kind == "view" and state["view"] is None:
                state["view"] = payload
                started.set()
            else:
                early.append((kind, payload))
        else:
            handle(data, kind, payload)

    def handle(data, kind: str, payload) -> None:
        if kind == "config":
            data.apply_config(payload[0])
        elif kind == "view":
            data.apply_view(payload)
        elif kind == "cut":
            data.cut(payload)
        elif kind == "collect":
            data.collect()
        elif kind == "reopen":
            data.access_log.reopen()

    def on_closed() -> None:
        if not stop.is_set():
            log.warning("worker %d: the master is gone; stopping", state["worker"])
            state["stop_timeout"] = min(ORPHAN_GRACE_S, state["stop_timeout"])
            stop.set()
            started.set()

    sock = socket.socket(fileno=channel_fd)
    channel = await open_channel(sock, on_message, on_closed)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await started.wait()
    if state["config"] is None or state["view"] is None:
        return 1                   # stopped, or the master went away, before it said what to serve
    config = state["config"]
    access_log = AccessLog(config.access_log if config.access_log in ("stdout", "off")
                           else config.resolve(config.access_log), worker=state["worker"])
    data = DataPlane(config, loop, access_log, lambda report: channel.send("report", report))
    data.apply_view(state["view"])
    for kind, payload in early:
        handle(data, kind, payload)
    state["data"] = data
    listeners = [socket.socket(fileno=fd) for fd in listener_fds]
    if state["identity"] is not None:         # holding its sockets and log file; before any client
        drop_privileges(state["identity"], state["worker"])
    await data.start(listeners)
    channel.send("ready", os.getpid())
    await stop.wait()
    timeout = state["stop_timeout"]
    await data.shutdown(timeout, min(data.config.drain.client_grace, timeout))
    access_log.close()
    channel.close()
    return 0


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
    from .loop import run_async
    fds = [int(a) for a in argv]
    return run_async(run(fds[0], fds[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
