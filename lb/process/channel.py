"""The master <-> worker channel: one Unix socketpair per worker, framed messages.

A message is a (kind, payload) tuple, pickled, after a 4-byte big-endian length.
Pickle is safe here: both ends are lb processes of the same code, and the
socketpair is created by the master and inherited by its own child, reachable by
nobody else. Payloads are the plain data of lb/core/planes.py (views, reports)
and the Config; nothing is ever sent per request (reports are batched).

Master -> worker: ("config", (Config, slot, Identity or None)), ("view", RoutingView), ("cut", name),
("collect", None), ("reopen", None) (the access log file), ("stop", timeout_s).
Worker -> master: ("ready", pid), ("report", Report). The handoff channel of an
upgrade (handoff.py) uses the same framing with builtins only. Each side dispatches
the kinds from one table: arbiter.py's FROM_WORKER, worker.py's FROM_MASTER.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from typing import Any, Callable

log = logging.getLogger("lb.channel")
HEADER = struct.Struct(">I")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024      # a config with thousands of backends fits


def frame(kind: str, payload: Any = None) -> bytes:
    body = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class Channel(asyncio.Protocol):
    """One end of a channel: `on_message(kind, payload)` for each message in order,
    `on_closed()` once when the other end is gone (EOF, error or a malformed frame)."""

    def __init__(self, on_message: Callable[[str, Any], None], on_closed: Callable[[], None]):
        self.on_message = on_message
        self.on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._ended = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer)
            if size > MAX_MESSAGE_BYTES:
                log.error("channel: a %d-byte message is over the limit; closing", size)
                self.close()
                return
            if len(buffer) < HEADER.size + size:
                return
            body = bytes(buffer[HEADER.size:HEADER.size + size])
            del buffer[:HEADER.size + size]
            kind, payload = pickle.loads(body)
            self.on_message(kind, payload)
            if self._ended:
                return

    def send(self, kind: str, payload: Any = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(kind, payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self._ended:
            self._ended = True
            self.on_closed()


async def open_channel(sock, on_message, on_closed) -> Channel:
    """Wrap a connected Unix socket (one end of a socketpair) in a Channel."""
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(lambda: Channel(on_message, on_closed), sock=sock)
    return channel
