"""Access log: one JSON object a line, written in batches off the hot path.

Lines are built per request but written by the data plane's sweeper (every
100 ms) and at shutdown, so a request never waits on a write. It belongs to the
data plane: a line per request must not cross to the control plane (each data
plane process will write its own lines). No header values are
logged (no cookies, no Authorization) and the path is logged without its query.
"""

from __future__ import annotations

import json
import os
import select
import stat
import sys
import time

from ..core import http1

# A request's line, as json.dumps writes the dict of AccessLog.line_fields: strings go through
# the same C escaper json.dumps uses, numbers through repr.
_json_str = json.encoder.encode_basestring_ascii
_LINE = ('{"time": "%s", "client": %s, "method": %s, "path": %s, "status": %d, "bytes": %d, '
         '"backend": %s, "version": %s, "duration_ms": %r, "retries": %d, "pin": %s%s%s%s}')

PIPE_BUF = select.PIPE_BUF       # a pipe write up to this size is atomic
FILE_CHUNK = 1 << 20             # O_APPEND file writes: whole lines, up to this much at once


class AccessLog:
    """Where access lines go: 'stdout', 'off', or a file path (appended).

    Several workers write to one file or one stdout: each write() carries whole lines
    only, to a file opened O_APPEND (appends are never interleaved), and to a pipe at most
    PIPE_BUF bytes (atomic), so no line is ever cut by another worker's. With `worker`
    set, every line names it."""

    def __init__(self, target: str, worker: int | None = None):
        self._lines: list[str] = []
        self._owned = False
        self._fd: int | None = None
        self._chunk = PIPE_BUF
        if target == "stdout":
            sys.stdout.flush()
            self._fd = sys.stdout.fileno()
        elif target != "off":
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._owned = True
        if self._fd is not None and stat.S_ISREG(os.fstat(self._fd).st_mode):
            self._chunk = FILE_CHUNK
        self._target = target
        self.on = self._fd is not None          # off: callers need not call write() at all
        self._worker = {"worker": worker} if worker is not None else {}
        self._worker_text = ', "worker": %d' % worker if worker is not None else ""
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
        """One request's line: the JSON text json.dumps makes of `line_fields()`, written
        from a template (5.0 -> 2.8 µs a request; tests/unit/test_accesslog.py checks it
        byte for byte against json.dumps)."""
        if self._fd is None:
            return
        head = exchange.head
        pin = ('{"version": %s, "how": %s}' % (_json_str(exchange.version), _json_str(exchange.pin_how))
               if exchange.pin_how else "null")
        self._lines.append(_LINE % (
            self._timestamp(), _json_str(self._client(exchange)), _json_str(head.method.decode("latin-1")),
            _json_str(head.target.split(b"?", 1)[0].decode("latin-1")), exchange.status, exchange.bytes_out,
            _json_str(route.name) if route else "null", _json_str(route.version) if route else "null",
            round((time.monotonic() - exchange.started) * 1000, 2), max(len(exchange.tried) - 1, 0), pin,
            ', "error": ' + _json_str(exchange.error) if exchange.error else "", exchange.client.tls_text,
            self._worker_text))

    def line_fields(self, exchange, route, duration_ms: float, time_text: str) -> dict:
        """What a request's line says, as a dict (the reference the template is tested against)."""
        head = exchange.head
        return {
            "time": time_text, "client": self._client(exchange),
            "method": head.method.decode("latin-1"), "path": head.target.split(b"?", 1)[0].decode("latin-1"),
            "status": exchange.status, "bytes": exchange.bytes_out,
            "backend": route.name if route else None,
            "version": route.version if route else None,
            "duration_ms": duration_ms,
            "retries": max(len(exchange.tried) - 1, 0),
            "pin": {"version": exchange.version, "how": exchange.pin_how}
            if exchange.pin_how else None,
            **({"error": exchange.error} if exchange.error else {}),
            **({"tls": exchange.client.tls} if exchange.client.tls else {}), **self._worker}

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
        if self._fd is None:
            return
        self._lines.append(json.dumps({
            "time": self._timestamp(), "client": client.ip.decode(), "method": None,
            "path": None, "status": exc.status, "bytes": 0, "backend": None,
            "version": None, "duration_ms": 0, "retries": 0, "error": exc.message,
            **({"tls": client.tls} if client.tls else {}), **self._worker}))

    def flush(self) -> None:
        if not self._lines or self._fd is None:
            return
        lines, self._lines = self._lines, []
        chunk, size, limit = [], 0, self._chunk
        for line in lines:
            data = line.encode() + b"\n"
            if chunk and size + len(data) > limit:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except BlockingIOError:
            pass                 # a full stdout pipe: the lines are dropped, traffic goes on
        except OSError as exc:
            print(f"lb: access log: {exc}", file=sys.stderr)

    def reopen(self) -> None:
        """Open the file again by its name (logrotate renamed it: SIGUSR1). The lines still
        held go to the old file first, so none is lost; a file that cannot be opened keeps
        the old one."""
        if not self._owned:
            return
        self.flush()
        try:
            fd = os.open(self._target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            print(f"lb: access log: cannot reopen {self._target}: {exc.strerror}; writing on to the old file",
                  file=sys.stderr)
            return
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        self.flush()
        if self._owned:
            os.close(self._fd)
        self._fd = None
        self.on = False
