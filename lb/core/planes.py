"""The one interface between the data plane and the control plane. No I/O.

Theory of operation
-------------------
The data plane (lb/proxy) carries requests; the control plane (lb/control)
owns the pool and decides every state change. They meet here, and nothing
else crosses, so that the two can live in different processes: everything
below is plain data.

Control -> data plane (`DataPlane` methods, lb/proxy/dataplane.py):
- `apply_view(RoutingView)`: the nodes (address, version, effective weight,
  takes traffic, draining, max_conns) and the versions in order, published on
  every change;
- `apply_config(Config)`: the settings a reload may change (timeouts, limits,
  retries, balance);
- `cut(name)`: drain.timeout passed on that node: close what is left on it;
- `apply_assets(AssetsUpdate)`: what changed in the asset index (lb/core/skew.py);
- `collect()`: report now (before the control plane answers a question whose
  answer counts requests).

Data plane -> control plane (`Control.on_report`, lb/control/plane.py): a
`Report`, sent on every sweep (100 ms), soon after a view was applied, when a
draining node's last request or tunnel ends, and on `collect()`; never per
request. It carries, per node, the requests in flight and tunnels open now,
what was served since the last report (`StatsDelta`: requests by status class
and latency bucket, connect errors, upstream errors, retries, lb-made
failures), the passive-health outcomes in order, and the result of a `cut`;
and for the whole data plane the lb-made failures by reason, retries, pin
counters, open client connections and requests waiting for a backend at its
max_conns, the assets learned and the skew counters.

A report names the view generation it was written under: the control plane
calls a draining node drained only on a report written after the data plane
applied the view in which the node stopped taking traffic (before that, a new
request could still have gone to it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .values import format_hostport
from .stats import StatsDelta


class Endpoint:
    """What a node is on both sides of the interface (the control plane's `Node`, the data
    plane's `Route`): an address, and work in flight on it."""

    __slots__ = ()

    @property
    def address(self) -> str:
        return format_hostport(self.host, self.port)

    @property
    def idle(self) -> bool:
        return self.inflight == 0 and self.tunnels == 0


@dataclass(frozen=True)
class NodeView:
    name: str
    host: str
    port: int
    version: str
    effective_weight: float
    takes_traffic: bool          # ready, up, weight > 0
    draining: bool               # the control plane waits for the node's work to end
    max_conns: int = 0           # requests at once on this node in this data plane; 0: no cap
    reachable: bool = False      # ready and up at weight 0: only a request that may override goes (skew)


@dataclass(frozen=True)
class RoutingView:
    generation: int              # grows with every view the control plane publishes
    nodes: tuple[NodeView, ...]
    versions: tuple[str, ...]    # oldest -> newest; the last is the target


@dataclass
class NodeReport:
    inflight: int
    tunnels: int
    stats: StatsDelta
    # Passive-health outcomes in order, run-length coded: [failed, count] pairs. A
    # failure is a connect error or a 5xx; a success is sent only after a failure
    # (it ends a run of consecutive failures), so a healthy node sends none.
    outcomes: list = field(default_factory=list)
    cut: int | None = None       # requests and tunnels a `cut` closed, when one ran


@dataclass
class Report:
    generation: int              # the view applied when this report was written
    nodes: dict[str, NodeReport]
    failed: Counter              # lb-made failures by reason (status, "cut", "drain_deadline")
    retries: int
    pins: dict[str, Counter] | None   # assignments, migrations, pinned_requests (pinning on)
    clients: int                 # client connections open now
    queued: int = 0              # requests waiting for a capped backend now
    assets: list = field(default_factory=list)     # skew: Assets learned since the last report
    skew: Counter | None = None  # skew: requests by (how, version), gone versions named, copies missing
