"""Active health checks: one task, every health.interval, all nodes in parallel.

The rules (rise, fall, version mismatch, a node's drain request) are
lb/core/health.py; this runs the probes and hands each result to the control
plane, which applies it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .. import tls
from ..core import http1
from ..core.errors import HttpError
from ..core.health import DRAIN, PASS, should_check, verdict

log = logging.getLogger("lb.health")
VERSION_HEADER = b"x-backend-version"
DRAIN_HEADER = b"x-lb-drain"           # `X-Lb-Drain: 1`: the node asks to be drained


class _CheckSink:
    __slots__ = ("status", "version", "drain", "done")

    def __init__(self):
        self.status = 0
        self.version = None
        self.drain = False
        self.done = False

    def on_response(self, head) -> None:
        if head.status >= 200:
            self.status = head.status
            for name, value in head.headers:
                if name.lower() == VERSION_HEADER:
                    self.version = value.decode("latin-1").strip()
                elif name.lower() == DRAIN_HEADER:
                    self.drain = value.strip() == b"1"
            self.done = True

    def on_response_body(self, data) -> None:
        pass

    def on_response_end(self) -> None:
        self.done = True


class Checker:
    """Runs active checks and applies them through the control plane."""

    def __init__(self, control):
        self.control = control
        self._task: asyncio.Task | None = None
        self._tls: tuple = (None, {})        # (the config they were made for, backend -> TLS)

    def _tls_for(self, backend) -> dict:
        """ssl and server_hostname for a TLS backend (its checks speak TLS as its traffic does)."""
        config = self.control.config
        if self._tls[0] is not config:
            self._tls = (config, tls.backend_contexts(config))
        made = self._tls[1].get(backend.name)
        return {"ssl": made[0], "server_hostname": made[1]} if made is not None else {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            backends = [b for b in self.control.pool.backends.values() if should_check(b)]
            await asyncio.gather(*(self._check(b) for b in backends))
            interval = self.control.config.health.interval
            await asyncio.sleep(max(interval - (time.monotonic() - started), 0.01))

    async def _check(self, backend) -> None:
        health = self.control.config.health
        started = time.monotonic()
        try:
            status, version, drain_header = await asyncio.wait_for(
                self._probe(backend, health.path, self._tls_for(backend)), health.timeout)
            said = verdict(status, drain_header, health.drain_on)
            result = {"ok": said == PASS, "status": status}
            if said == DRAIN:
                result["drain"] = True
        except (OSError, asyncio.TimeoutError, HttpError) as exc:
            said, version = None, None
            result = {"ok": False, "error": _describe(exc)}
        result["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
        result["version"] = version
        backend.hstate.last_check = result
        if backend.name in self.control.pool.backends:
            self.control.apply_check(backend, said == PASS, version, drain=said == DRAIN)

    @staticmethod
    async def _probe(backend, path: str, options: dict) -> tuple[int, str | None, bool]:
        """One GET on a fresh connection; (status, X-Backend-Version or None, X-Lb-Drain: 1)."""
        reader, writer = await asyncio.open_connection(backend.host, backend.port, **options)
        try:
            writer.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: lb-health\r\n"
                         b"Connection: close\r\n\r\n" % (path.encode(), backend.address.encode()))
            sink = _CheckSink()
            parser = http1.parsers_for("httptools")[1](sink)
            parser.expect(b"GET", False)
            while not sink.done:
                data = await reader.read(4096)
                if not data:
                    raise HttpError("closed before answering", 502)
                parser.feed(data)
            return sink.status, sink.version, sink.drain
        finally:
            writer.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, HttpError):
        return exc.message
    return getattr(exc, "strerror", None) or type(exc).__name__
