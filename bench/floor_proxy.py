"""The Python floor: the least a uvloop proxy can do per request, for bench/throughput.py.

    python bench/floor_proxy.py LISTEN_PORT BACKEND_PORT [BACKEND_PORT ...]

Each client connection gets one upstream connection to the next backend in turn,
and bytes go both ways as they come: no parsing, no routing per request, no
headers added, no stats. Written for the bench only (lb shares no code with it): it
shows what pure Python on uvloop costs per proxied request on this machine, so lb's
own work per request is lb's CPU minus this. With `Connection: close` the backend
closes the upstream connection after each response (the floor cannot keep it: it
does not know where a response ends), so the floor there also pays an upstream
connect per request, which lb's pools do not.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: "Client"):
        self.client = client
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        pending, self.client.pending = self.client.pending, []
        for data in pending:
            transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    backends: itertools.cycle

    def __init__(self):
        self.transport = None
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.upstream = Upstream(self)
        loop = asyncio.get_running_loop()
        loop.create_task(loop.create_connection(lambda: self.upstream, "127.0.0.1", next(Client.backends)))

    def data_received(self, data: bytes) -> None:
        upstream = self.upstream.transport
        if upstream is None:
            self.pending.append(data)
        else:
            upstream.write(data)

    def connection_lost(self, exc) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.close()


async def main(port: int, backends: list[int]) -> None:
    Client.backends = itertools.cycle(backends)
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), [int(p) for p in sys.argv[2:]]))
