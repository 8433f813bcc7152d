"""`lb serve`: the wiring of the planes, in the foreground until SIGTERM/SIGINT.

The control plane (pool, admin socket, state file, checks, /metrics) and the
data plane (listeners, connections) are built here and joined by the one
interface of lb/core/planes.py: the data plane's reports go to
`Control.on_report`; the control plane calls the data plane's interface methods.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from .control.admin import Admin, AdminServer
from .control.metrics import MetricsServer
from .control.plane import Control
from .control.statefile import load_state
from .core.config import Config
from .proxy.accesslog import AccessLog
from .proxy.dataplane import DataPlane

log = logging.getLogger("lb")


async def serve(config: Config, config_path: str | None = None) -> None:
    """Run until a stop signal; then drain gracefully (bounded by drain.timeout).

    Raises CommandError when the admin socket is taken, OSError when a port is.
    """
    loop = asyncio.get_running_loop()
    access_log = AccessLog(config.access_log if config.access_log in ("stdout", "off")
                           else config.resolve(config.access_log))
    control = Control(config, loop)
    restored = load_state(control)
    if restored:
        log.info("state file: %s", ", ".join(restored))
    data = DataPlane(config, loop, access_log, control.on_report)
    control.attach(data)
    admin = Admin(control, config_path)
    admin_server = AdminServer(admin, config.resolve(config.admin.socket), config.admin.mode)
    await admin_server.start()
    metrics = MetricsServer(control, *config.metrics.listen) if config.metrics.listen else None
    control.place_nodes()            # nodes in service before the first client can connect
    try:
        await data.start()
        if metrics is not None:
            await metrics.start()
    except OSError:
        await admin_server.close()
        raise
    control.start()                  # checks once the listeners are bound: no probe's source
                                     # port can take a listening port first
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(admin)))
    addresses = ", ".join(f"{h}:{p}" for h, p in data.addresses)
    log.info("lb listening on %s with %d backends (%s parser); admin socket %s",
             addresses, len(control.pool.backends), data.request_parser_class.__name__,
             admin_server.path)
    await stop.wait()
    log.info("stopping: finishing requests in flight (up to %.0fs)", config.drain.timeout)
    await admin_server.close()
    if metrics is not None:
        await metrics.close()
    await data.shutdown(config.drain.timeout)
    await control.stop()
    access_log.close()
    log.info("stopped")


async def _reload(admin: Admin) -> None:
    reply = await admin.execute("reload")
    if reply["ok"]:
        log.info("SIGHUP reload: %s", "; ".join(reply["changed"]) or "no change")
    else:
        log.error("SIGHUP reload: %s", reply["error"])
