"""lb's Python work per proxied request, in-process: no sockets, no kernel, no wrk.

    .venv/bin/python bench/hotpath.py [--requests 200000] [--profile] [--http httptools|h11] [--close]

The real data plane (lb/proxy) with fake transports: a client connection sends the
request wrk sends (`GET / HTTP/1.1`, Host), the exchange picks a backend of 10 (pinning
on, least_conn, stats and latency window as in `lb serve`), the pooled upstream
connection gets the request head and answers with nginx's response head and a 34-byte
JSON body, which goes back to the client. Prints CPU µs per request (process time
over the loop); --profile adds cProfile's top functions. The system calls (two reads,
two writes per request) are not here: bench/throughput.py and bench/profile.py measure
the whole. --close: each request on a new client connection, made and lost around it
(`Connection: close` as wrk sends it): the Python cost of a connection's life.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lb.core.config import parse_config  # noqa: E402
from lb.core.planes import NodeView, RoutingView  # noqa: E402
from lb.proxy.accesslog import AccessLog  # noqa: E402
from lb.proxy.client import ClientConnection  # noqa: E402
from lb.proxy.dataplane import DataPlane  # noqa: E402
from lb.proxy.upstream import UpstreamConnection  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BODY = b'{"node": "web1", "version": "v1"}\n'
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 10:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n"
            % len(BODY)) + BODY


class Transport:
    """What the data plane calls on a transport; writes are kept only as the last one."""

    def __init__(self):
        self.last = b""
        self.closed = False

    def write(self, data):
        self.last = data

    def pause_reading(self):
        pass

    resume_reading = pause_reading

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    abort = close

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 50000) if name == "peername" else default


CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n"


async def run(requests: int, http: str, profile: bool, close: bool = False) -> float:
    backends = "\n".join(f"  - {{name: web{i}, address: '127.0.0.1:{9000 + i}', version: v1}}" for i in range(1, 11))
    config = parse_config(f"backends:\n{backends}\nhttp: {http}\naccess_log: off\n")
    plane = DataPlane(config, asyncio.get_running_loop(), AccessLog("off"), lambda report: None)
    plane.apply_view(RoutingView(1, tuple(NodeView(f"web{i}", "127.0.0.1", 9000 + i, "v1", 100.0, True, False)
                                          for i in range(1, 11)), ("v1",)))
    for route in plane.table.routes.values():      # one pooled connection per backend
        conn = UpstreamConnection(plane.upstreams, route)
        conn.connection_made(Transport())
        plane.upstreams.idle[route.name] = [conn]
    client = ClientConnection(plane)
    transport = Transport()
    client.connection_made(transport)
    active = plane.upstreams.active

    def one() -> None:
        client.data_received(REQUEST)
        conn = next(iter(active))
        conn.data_received(RESPONSE)

    def one_connection() -> None:
        fresh, carrier = ClientConnection(plane), Transport()
        fresh.connection_made(carrier)
        fresh.data_received(CLOSE_REQUEST)
        next(iter(active)).data_received(RESPONSE)
        fresh.connection_lost(None)
        transport.last = carrier.last

    if close:
        one = one_connection       # noqa: F811 (the measured step)

    for _ in range(2000):
        one()
    assert transport.last.endswith(BODY) and b"200 OK" in transport.last, transport.last
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    started = time.process_time()
    for _ in range(requests):
        one()
    used = time.process_time() - started
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return used * 1e6 / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--http", default="httptools")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--close", action="store_true", help="a new client connection per request")
    args = parser.parse_args()
    import uvloop
    per = uvloop.run(run(args.requests, args.http, args.profile, args.close))
    print(f"{per:.2f} µs of CPU per request ({args.http}, {args.requests} requests, in-process"
          f"{', a connection each' if args.close else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
