"""Users: the load of `lb demo` and of the tests.

Each user is a browser-like client: one keep-alive HTTP/1.1 connection (h11), the
`lb_version` cookie kept from response to response, `life` requests with a think
time between them, then it leaves and a new user takes its slot. A response with
`Connection: close` makes it open a new connection for its next request; a
connection closed under a request, an error status or a timeout is a failure (no
silent retry: lb must never close a keep-alive connection under a client). Every
answer is recorded, with the backend's node and version from the demo app's JSON body.

The deploy bench (bench/deploy_under_load.py) keeps its own aiohttp load on purpose:
the proof must share no code with lb.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass

import h11

READ_BYTES = 65536


@dataclass(frozen=True)
class Record:
    sent: float                  # time.monotonic() when the request went out
    latency_s: float
    status: int
    node: str | None
    version: str | None
    user: int
    phase: str


class Closed(Exception):
    """The connection ended under a request."""


class Connection:
    """One keep-alive client connection, one request at a time."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(self, path: str, headers: list, timeout_s: float):
        """(response, body). Raises Closed, OSError, asyncio.TimeoutError, h11.ProtocolError."""
        conn = self.h11
        self.writer.write(conn.send(h11.Request(method="GET", target=path, headers=headers)))
        self.writer.write(conn.send(h11.EndOfMessage()))
        response, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(self.reader.read(READ_BYTES), timeout_s)
                if not data:
                    raise Closed("lb closed the connection" + (" mid-response" if response else ""))
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return response, body

    def next_cycle(self) -> bool:
        """Ready the connection for the next request; False when lb ended it (Connection: close)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        self.writer.close()


class Users:
    """`slots` users at a time against host:port; `life` is (min, max) requests per user,
    or None for users who stay until stopped. `port` may be a list (a fleet of lbs): each
    request then goes to one picked at random, as a client of DNS round-robin does, on a
    keep-alive connection of the user's to that lb, with the same cookie jar."""

    def __init__(self, host: str, port: int | list[int], slots: int = 20, life: tuple[int, int] | None = (20, 60),
                 think_s: float = 0.01, path: str = "/", keep_cookie: bool = True,
                 cookie: str = "lb_version", timeout_s: float = 10.0, rng: random.Random | None = None,
                 ssl=None, server_hostname: str | None = None):
        """`ssl`: an ssl.SSLContext to speak HTTPS with, to `server_hostname`."""
        self.ports = list(port) if isinstance(port, (list, tuple)) else [port]
        self.host, self.port, self.slots, self.life = host, self.ports[0], slots, life
        self.ssl = {"ssl": ssl, "server_hostname": server_hostname or host} if ssl is not None else {}
        self.think_s, self.path, self.keep_cookie, self.timeout_s = think_s, path, keep_cookie, timeout_s
        self.cookie_prefix = cookie.encode() + b"="
        self.rng = rng or random.Random()
        self.phase = "steady"
        self.records: list[Record] = []
        self.failures: list[tuple[int, str]] = []          # (user, what went wrong)
        self.seen: dict[int, list[tuple[float, str]]] = defaultdict(list)   # user -> (time, version)
        self.users = 0
        self.stopping = False
        self._tasks: list[asyncio.Task] = []

    # -- running -----------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._slot()) for _ in range(self.slots)]

    async def stop(self, timeout_s: float = 15.0) -> None:
        self.stopping = True
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in late:
                task.cancel()

    async def __aenter__(self):
        self.start()
        return self

    async def __aexit__(self, *exc):
        await self.stop()

    async def _slot(self) -> None:
        while not self.stopping:
            self.users += 1
            requests = self.rng.randint(*self.life) if self.life else None
            await self._user(self.users, requests)

    async def _user(self, user: int, requests: int | None) -> None:
        cookie, conns, done = None, {}, 0          # a connection per lb (port) the user talks to
        try:
            while not self.stopping and (requests is None or done < requests):
                port = self.ports[0] if len(self.ports) == 1 else self.rng.choice(self.ports)
                conn = conns.get(port)
                if conn is None:
                    conn = conns[port] = await self._connect(user, port)
                    if conn is None:
                        return
                cookie = await self._request(user, conn, cookie, port)
                if not conn.next_cycle():
                    conns.pop(port).close()
                done += 1
                await asyncio.sleep(self.think_s)
        except (Closed, OSError, h11.ProtocolError, asyncio.TimeoutError, ValueError) as exc:
            self.failures.append((user, f"{type(exc).__name__}: {exc}"))
        finally:
            for conn in conns.values():
                if conn is not None:
                    conn.close()

    async def _connect(self, user: int, port: int) -> Connection | None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, port, **self.ssl),
                                                    self.timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            self.failures.append((user, f"connect: {exc}"))
            await asyncio.sleep(0.2)
            return None
        return Connection(reader, writer)

    async def _request(self, user: int, conn: Connection, cookie: bytes | None, port: int) -> bytes | None:
        headers = [("Host", f"{self.host}:{port}"), ("User-Agent", "lb-users")]
        if cookie:
            headers.append(("Cookie", cookie))
        sent = time.monotonic()
        response, body = await conn.request(self.path, headers, self.timeout_s)
        latency_s = time.monotonic() - sent
        node = version = None
        if response.status_code == 200:
            answer = json.loads(body)
            node, version = answer.get("node"), answer.get("version")
            self.seen[user].append((sent, version))
        else:
            self.failures.append((user, f"status {response.status_code}"))
        self.records.append(Record(sent, latency_s, response.status_code, node, version, user, self.phase))
        if self.keep_cookie:
            for name, value in response.headers:
                if name == b"set-cookie" and value.startswith(self.cookie_prefix):
                    cookie = value.split(b";", 1)[0]
        return cookie

    # -- what was seen -------------------------------------------------------------------
    @property
    def requests(self) -> int:
        return len(self.records)

    def backward_flips(self, order, before: float = float("inf")) -> list:
        """Users who were served an older version after a newer one (answers sent before `before`)."""
        rank = {v: i for i, v in enumerate(order)}
        flips = []
        for user, seq in self.seen.items():
            versions = [v for at, v in seq if at < before]
            if any(rank[b] < rank[a] for a, b in zip(versions, versions[1:])):
                flips.append((user, versions))
        return flips
