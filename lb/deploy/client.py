"""The one admin-socket client: `lb ctl`, `lb deploy` and the tests all speak through it.

One command a line out, one JSON reply a line back. `request` is the blocking
form (ctl, tests); `AdminClient` is the asyncio form the deploy uses, which
opens a connection per command (so one node's blocking `wait` does not hold
up another's) and retries while lb is unreachable (it may be restarting: every
command a deploy sends is safe to repeat).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

from ..core.errors import DeployError

RECONNECT_S = 30.0          # how long lb may be unreachable mid-deploy (a restart of lb)
MAX_REPLY_BYTES = 1 << 24


class Unreachable(DeployError):
    """lb's admin socket does not answer."""


class StepFailed(Exception):
    """A deploy step failed: lb refused a command ({"ok": false}), or an update command failed."""

    def __init__(self, reason: str, output: list[str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.output = output or []


def _decode(raw: bytes) -> dict:
    if not raw:
        raise EOFError("lb closed the connection without a reply")
    return json.loads(raw)


def request(path: str, line: str, timeout_s: float | None = 30.0) -> dict:
    """One command on a new connection; the reply as a dict.

    Raises OSError when the socket cannot be reached, EOFError when lb closes it
    without a reply, TimeoutError when the reply takes longer than timeout_s."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        sock.sendall(line.encode() + b"\n")
        with sock.makefile("rb") as reader:
            return _decode(reader.readline(MAX_REPLY_BYTES))


class AdminClient:
    """One admin command per connection; retried while lb is unreachable."""

    def __init__(self, path: str, reconnect_s: float = RECONNECT_S):
        self.path = path
        self.reconnect_s = reconnect_s

    async def call(self, line: str, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + self.reconnect_s
        while True:
            try:
                return await self._once(line, timeout_s)
            except (OSError, EOFError, asyncio.TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise Unreachable(f"cannot reach lb on admin socket {self.path}: "
                                      f"{getattr(exc, 'strerror', None) or exc or 'no reply'}") from None
            await asyncio.sleep(0.2)

    async def _once(self, line: str, timeout_s: float) -> dict:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.path, limit=MAX_REPLY_BYTES), 5.0)
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            raw = await asyncio.wait_for(reader.readline(), timeout_s)
        finally:
            writer.close()
        return _decode(raw)

    async def close(self) -> None:
        """Nothing to close: a connection per command (SshAdminClient keeps relays)."""
