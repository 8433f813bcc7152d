"""`lb serve`: the master. It wires the control plane to the workers, in the foreground until
SIGTERM/SIGINT.

The master binds the listeners once and never touches request bytes: it owns the
control plane (pool, admin socket, state file, checks, /metrics) and the worker
processes (lb/control/workers.py), which carry all traffic on the inherited
listening sockets. The control plane meets the workers through the one interface
of lb/core/planes.py: their merged reports go to `Control.on_report`; views,
reloads and cuts go to every worker.

One listening socket is shared by every worker, not one SO_REUSEPORT socket each:
the kernel resets the connections queued on a reuseport socket when it closes, so
a worker that exits or is replaced (and the hitless upgrade, which hands the same
sockets to a new master) would fail the clients waiting in its queue.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from .control.admin import Admin, AdminServer
from .control.metrics import MetricsServer
from .control.plane import Control
from .control.statefile import load_state
from .control.workers import Workers, worker_count
from .core.config import LISTEN_BACKLOG, Config

log = logging.getLogger("lb")


def bind(listen) -> list[socket.socket]:
    """Bind and listen on every address, inheritable by the workers. Raises OSError."""
    socks: list[socket.socket] = []
    try:
        for host, port in listen:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


async def serve(config: Config, config_path: str | None = None) -> None:
    """Run until a stop signal; then drain gracefully (bounded by drain.timeout).

    Raises CommandError when the admin socket is taken, OSError when a port is,
    RuntimeError when a worker cannot start.
    """
    loop = asyncio.get_running_loop()
    control = Control(config, loop)
    restored = load_state(control)
    if restored:
        log.info("state file: %s", ", ".join(restored))
    admin = Admin(control, config_path)
    admin_server = AdminServer(admin, config.resolve(config.admin.socket), config.admin.mode)
    admin_server.check_free()        # before any worker serves a client for a doomed lb
    listeners = bind(config.listen)
    workers = Workers(config, loop, listeners, control.on_report, worker_count(config.workers))
    control.attach(workers)
    metrics = MetricsServer(control, *config.metrics.listen) if config.metrics.listen else None
    control.place_nodes()            # nodes in service before the first client can connect
    # Signals are ours before anything shows lb is up (a SIGHUP's default action is to exit).
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(admin)))
    admin_up = False
    try:
        await workers.start()
        await admin_server.start()   # the admin socket appears once the workers serve
        admin_up = True
        if metrics is not None:
            await metrics.start()
    except BaseException:
        if admin_up:                 # never unlink a socket another lb still serves
            await admin_server.close()
        await workers.shutdown(0)
        raise
    control.start()                  # checks once the listeners are bound: no probe's source
                                     # port can take a listening port first
    addresses = ", ".join(f"{h}:{p}" for h, p in workers.addresses)
    log.info("lb listening on %s with %d backends, %d workers (http: %s); admin socket %s",
             addresses, len(control.pool.backends), workers.count, config.http, admin_server.path)
    await stop.wait()
    log.info("stopping: finishing requests in flight (up to %.0fs)", config.drain.timeout)
    await admin_server.close()
    if metrics is not None:
        await metrics.close()
    await workers.shutdown(config.drain.timeout)
    await control.stop()
    log.info("stopped")


async def _reload(admin: Admin) -> None:
    reply = await admin.execute("reload")
    if reply["ok"]:
        log.info("SIGHUP reload: %s", "; ".join(reply["changed"]) or "no change")
    else:
        log.error("SIGHUP reload: %s", reply["error"])
