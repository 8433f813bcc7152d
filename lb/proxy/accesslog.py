"""Access log: one JSON object a line, written in batches off the hot path.

Lines are built per request but written by the data plane's sweeper (every
100 ms) and at shutdown, so a request never waits on a write. It belongs to the
data plane: a line per request must not cross to the control plane (each data
plane process will write its own lines). No header values are
logged (no cookies, no Authorization) and the path is logged without its query.
"""

from __future__ import annotations

import json
import sys
import time

from ..core import http1


class AccessLog:
    """Where access lines go: 'stdout', 'off', or a file path (appended)."""

    def __init__(self, target: str):
        self._lines: list[str] = []
        self._owned = False
        if target == "off":
            self._out = None
        elif target == "stdout":
            self._out = sys.stdout
        else:
            self._out = open(target, "a", encoding="utf-8")
            self._owned = True
        self._second = -1
        self._second_text = ""

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%03dZ" % (self._second_text, int((now - second) * 1000))

    def write(self, exchange, route) -> None:
        if self._out is None:
            return
        head = exchange.head
        path = head.target.split(b"?", 1)[0].decode("latin-1")
        self._lines.append(json.dumps({
            "time": self._timestamp(), "client": self._client(exchange),
            "method": head.method.decode("latin-1"), "path": path,
            "status": exchange.status, "bytes": exchange.bytes_out,
            "backend": route.name if route else None,
            "version": route.version if route else None,
            "duration_ms": round((time.monotonic() - exchange.started) * 1000, 2),
            "retries": max(len(exchange.tried) - 1, 0),
            "pin": {"version": exchange.version, "how": exchange.pin_how}
            if exchange.pin_how else None,
            **({"error": exchange.error} if exchange.error else {})}))

    @staticmethod
    def _client(exchange) -> str:
        """The client's address: behind a trusted proxy, the rightmost untrusted one."""
        client = exchange.client
        if client.trusted and exchange.head.forwarded_by:
            return http1.client_address(exchange.head.forwarded_by[0], client.ip,
                                        client.plane.is_trusted).decode("latin-1")
        return client.ip.decode()

    def write_error(self, client, exc) -> None:
        """A request refused before it had a parsed head (bad bytes, timeout)."""
        if self._out is None:
            return
        self._lines.append(json.dumps({
            "time": self._timestamp(), "client": client.ip.decode(), "method": None,
            "path": None, "status": exc.status, "bytes": 0, "backend": None,
            "version": None, "duration_ms": 0, "retries": 0, "error": exc.message}))

    def flush(self) -> None:
        if self._lines and self._out is not None:
            lines, self._lines = self._lines, []
            self._out.write("\n".join(lines) + "\n")
            self._out.flush()

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._out.close()
