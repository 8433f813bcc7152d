"""The seams where one part of lb meets two implementations of another, declared. No I/O.

Each is a `typing.Protocol`: what the caller may use, all of it, so that neither side
probes the other (`hasattr`) or leans on a field an implementation happens to have.
tests/unit/test_seams.py checks that every implementation named here has every member.

- `ExchangeClient`: the client side of one request, as its `Exchange` (lb/proxy/exchange.py)
  and the exchange's upstream connection see it: a `ClientConnection` (HTTP/1.1,
  lb/proxy/client.py) or an `H2Stream` (one stream of an HTTP/2 connection,
  lb/proxy/h2stream.py). `Http1Client` adds what only the HTTP/1.1 writer of a
  response uses; `H2Exchange` overrides those paths and uses `H2StreamClient`'s instead.
- `Client`: a client connection as the data plane (lb/proxy/dataplane.py) holds it: a
  `ClientConnection` or an `H2ClientConnection`. Its sweeper and its shutdown use these.
- `Link`: the data plane as the control plane (lb/control/plane.py) sees it: `Workers`
  (lb/process/arbiter.py, the worker processes) or a test's in-process fake. The first
  four are the plane interface (planes.py); the rest say how the workers are doing.
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import HttpError
from .planes import RoutingView


class Flow(Protocol):
    """Pauses reading from the client while any named reason holds (lb/proxy/flow.py)."""

    @property
    def paused(self) -> bool: ...

    def pause(self, reason: str) -> None: ...

    def resume(self, reason: str) -> None: ...


class ExchangeClient(Protocol):
    plane: Any                     # the DataPlane (lb/proxy/dataplane.py)
    h2: bool
    redirect: bool                 # the listener answers with a redirect to https
    ip: bytes
    trusted: bool                  # the peer is one of trusted_proxies
    tls: dict | None
    tls_text: str
    flow: Flow
    write_paused: bool             # its buffer is full: the upstream's reading pauses

    @property
    def closed(self) -> bool: ...

    def own_headers(self, head) -> bytes:
        """lb's own request header lines (X-Forwarded-*, Forwarded, Via)."""

    def cork(self) -> None:
        """Hold writes until uncork() (one upstream read, one write)."""

    def uncork(self) -> None: ...

    def send_error(self, exc: HttpError) -> None:
        """lb's own answer to the request."""

    def exchange_done(self, exchange, keep_alive: bool) -> None:
        """The exchange is over: the client side goes on to the next request, or closes."""


class Http1Client(ExchangeClient, Protocol):
    hsts_line: bytes               # the listener's Strict-Transport-Security line, or b""

    def write(self, data: bytes) -> None: ...

    def start_tunnel(self, upstream, route) -> None:
        """The backend switched protocols: bytes flow both ways untouched from now on."""


class H2StreamClient(ExchangeClient, Protocol):
    hsts_fields: tuple             # the listener's Strict-Transport-Security field, or ()

    def send_headers(self, fields: list) -> None: ...

    def send_data(self, data: bytes) -> None: ...

    def end(self) -> None: ...


class Client(Protocol):
    h2: bool
    transport: Any
    deadline: float                # when on_timeout is due (inf: never)

    @property
    def waiting_for_request(self) -> bool:
        """Open with no byte of a next request yet."""

    @property
    def in_tunnel(self) -> bool:
        """An HTTP/1.1 connection after a 101: the drain deadline ends it (end_tunnel)."""

    @property
    def lingering(self) -> bool:
        """lb half-closed it and waits for the client's end: not aborted at a shutdown."""

    def on_timeout(self) -> None: ...

    def finish(self, idle_until: float) -> None:
        """lb is stopping: finish what is in flight, close an idle connection by idle_until."""

    def rest(self, idle_before: float) -> None:
        """Idle since before `idle_before`: give back what the next request can make again."""


class Link(Protocol):
    restarts: int                  # worker processes started again after exiting
    predecessor: Any               # the old master after an upgrade (its .pid), or None

    def apply_view(self, view: RoutingView) -> None: ...

    def apply_config(self, config) -> None: ...

    def cut(self, name: str) -> None: ...

    def apply_assets(self, update) -> None: ...

    def collect(self) -> Any: ...

    def info(self) -> list[dict]:
        """One row per worker process: worker, pid, started, restarts."""


SEAMS = {ExchangeClient: ("lb.proxy.client:ClientConnection", "lb.proxy.h2stream:H2Stream"),
         Http1Client: ("lb.proxy.client:ClientConnection",),
         H2StreamClient: ("lb.proxy.h2stream:H2Stream",),
         Client: ("lb.proxy.client:ClientConnection", "lb.proxy.h2client:H2ClientConnection"),
         Link: ("lb.process.arbiter:Arbiter",)}
