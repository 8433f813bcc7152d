"""`lb serve`: run the proxy in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from .admin import Admin, AdminServer, load_state
from .config import Config
from .metrics import AccessLog, MetricsServer
from .proxy import Proxy

log = logging.getLogger("lb")


async def serve(config: Config, config_path: str | None = None) -> None:
    """Run until a stop signal; then drain gracefully (bounded by drain.timeout).

    Raises LbError when the admin socket is taken, OSError when a port is.
    """
    loop = asyncio.get_running_loop()
    access_log = AccessLog(config.access_log if config.access_log in ("stdout", "off")
                           else config.resolve(config.access_log))
    proxy = Proxy(config, loop, access_log)
    restored = load_state(proxy)
    if restored:
        log.info("state file: %s", ", ".join(restored))
    admin = Admin(proxy, config_path)
    admin_server = AdminServer(admin, config.resolve(config.admin.socket), config.admin.mode)
    await admin_server.start()
    metrics = MetricsServer(proxy, *config.metrics.listen) if config.metrics.listen else None
    try:
        await proxy.start()
        if metrics is not None:
            await metrics.start()
    except OSError:
        await admin_server.close()
        raise
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(admin)))
    addresses = ", ".join(f"{h}:{p}" for h, p in proxy.addresses)
    log.info("lb listening on %s with %d backends (%s parser); admin socket %s",
             addresses, len(proxy.pool.backends), proxy.request_parser_class.__name__,
             admin_server.path)
    await stop.wait()
    log.info("stopping: finishing requests in flight (up to %.0fs)", config.drain.timeout)
    await admin_server.close()
    if metrics is not None:
        await metrics.close()
    await proxy.shutdown(config.drain.timeout)
    access_log.close()
    log.info("stopped")


async def _reload(admin: Admin) -> None:
    reply = await admin.execute("reload")
    if reply["ok"]:
        log.info("SIGHUP reload: %s", "; ".join(reply["changed"]) or "no change")
    else:
        log.error("SIGHUP reload: %s", reply["error"])
