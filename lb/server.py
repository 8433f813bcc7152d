"""`lb serve`: run the proxy in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from .config import Config
from .metrics import AccessLog
from .proxy import Proxy

log = logging.getLogger("lb")


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Run until a stop signal; then drain gracefully (bounded by drain.timeout)."""
    loop = asyncio.get_running_loop()
    access_log = AccessLog(config.access_log if config.access_log in ("stdout", "off")
                           else config.resolve(config.access_log))
    proxy = Proxy(config, loop, access_log)
    await proxy.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # Reload arrives with the admin socket; until then SIGHUP must not kill lb.
    loop.add_signal_handler(signal.SIGHUP, lambda: log.warning("SIGHUP: reload is not available yet"))
    addresses = ", ".join(f"{h}:{p}" for h, p in proxy.addresses)
    log.info("lb listening on %s with %d backends (%s parser)",
             addresses, len(proxy.pool.backends), proxy.request_parser_class.__name__)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("stopping: finishing requests in flight (up to %.0fs)", config.drain.timeout)
    await proxy.shutdown(config.drain.timeout)
    access_log.close()
    log.info("stopped")
