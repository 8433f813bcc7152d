"""A test helper: the control plane's nodes and the data plane's routing table, joined as
lb joins them (every change to a node reaches the table through a published view)."""

from lb.core.balance import RoutingTable
from lb.core.config import BackendConfig
from lb.core.nodes import Pool, transition


def configs(layout, weights=None):
    """BackendConfigs web1.. with the versions in `layout` (e.g. ['v1', 'v1', 'v2'])."""
    weights = weights or [100] * len(layout)
    return [BackendConfig(name=f"web{i}", address=("127.0.0.1", 9000 + i), version=v, weight=w)
            for i, (v, w) in enumerate(zip(layout, weights), 1)]


class RoutedPool:
    """Nodes web1.. in a Pool (`.nodes`) and the RoutingTable (`.table`) their views feed."""

    def __init__(self, layout=("v1",), weights=None, policy="least_conn", target=None):
        self.nodes = Pool(configs(layout, weights))
        for node in self.nodes.backends.values():
            transition(node, "start", 0.0)
        if target:
            self.nodes.set_target(target)
        self.table = RoutingTable(policy)
        self.generation = 0
        self.publish()

    def publish(self) -> None:
        """What Control.changed() does: the table gets a new view."""
        self.generation += 1
        self.table.apply(self.nodes.view(self.generation))

    def node(self, name):
        return self.nodes.backends[name]

    def route(self, name):
        return self.table.routes[name]

    def set_state(self, name, *events, now=0.0):
        for event in events:
            transition(self.node(name), event, now)
        self.publish()
