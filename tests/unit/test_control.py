"""The control plane without sockets: views out, reports in, through a fake data plane."""

import asyncio
from collections import Counter

import pytest

from lb.control.plane import Control
from lb.core.config import parse_config
from lb.core.nodes import DRAINED, DRAINING, EJECTED, READY
from lb.core.planes import NodeReport, Report
from lb.core.stats import StatsDelta

CONFIG = """
backends:
  - {name: web1, address: '127.0.0.1:9001'}
  - {name: web2, address: '127.0.0.1:9002'}
  - {name: web3, address: '127.0.0.1:9003'}
drain: {timeout: 30s}
passive: {failures: 3, eject: 10s}
"""


class FakeDataPlane:
    """What the control plane may call on the data plane (a Link, lb/core/seams.py), recorded."""

    restarts = 0
    predecessor = None

    def __init__(self):
        self.views, self.configs, self.cuts, self.collected = [], [], [], 0
        self.assets = []

    def info(self):
        return []

    def apply_view(self, view):
        self.views.append(view)

    def apply_config(self, config):
        self.configs.append(config)

    def cut(self, name):
        self.cuts.append(name)

    def apply_assets(self, update):
        self.assets.append(update)

    def collect(self):
        self.collected += 1

    def node(self, name):
        return next(n for n in self.views[-1].nodes if n.name == name)


@pytest.fixture
async def plane():
    control = Control(parse_config(CONFIG), asyncio.get_running_loop())
    data = FakeDataPlane()
    control.attach(data)
    control.place_nodes()
    return control, data


def report(control, generation=None, failed=None, **nodes):
    """A report under `generation` (the last view by default); nodes: name=(inflight, tunnels[, stats,
    outcomes, cut])."""
    rows = {}
    for name in control.pool.backends:
        row = nodes.get(name, (0, 0))
        inflight, tunnels, stats, outcomes, cut = row if len(row) == 5 else (*row, None, [], None)
        rows[name] = NodeReport(inflight, tunnels, stats or StatsDelta(), outcomes, cut)
    gen = control.generation if generation is None else generation
    control.on_report(Report(gen, rows, Counter(failed or {}), 0, None, 0))


async def test_every_view_is_published_with_a_new_generation(plane):
    control, data = plane
    assert [v.generation for v in data.views] == list(range(1, len(data.views) + 1))
    assert all(n.takes_traffic for n in data.views[-1].nodes)


async def test_a_drain_completes_only_on_a_report_written_under_the_drain_view(plane):
    control, data = plane
    web1 = control.pool.backends["web1"]
    report(control, web1=(2, 0))                        # two in flight before the drain
    before = control.generation
    control.set_admin_state(web1, "drain")
    assert web1.admin_state == DRAINING and not data.node("web1").takes_traffic
    report(control, generation=before)                  # written before the data plane saw the drain
    assert web1.admin_state == DRAINING                 # a request may have gone there since
    report(control, web1=(1, 0))
    assert web1.admin_state == DRAINING
    report(control)
    assert web1.admin_state == DRAINED and control.stats.drains == 1
    assert len(control.stats.drain_durations) == 1


async def test_a_drain_deadline_cuts_and_the_report_ends_the_drain(plane):
    control, data = plane
    web2 = control.pool.backends["web2"]
    report(control, web2=(1, 1))
    control.set_admin_state(web2, "drain")
    report(control, web2=(1, 1))
    control.tick(control.now() + 29.0)
    assert data.cuts == []
    control.tick(control.now() + 31.0)
    control.tick(control.now() + 31.1)                  # asked once, not every sweep
    assert data.cuts == ["web2"] and web2.admin_state == DRAINING
    report(control, web2=(0, 0, None, [], 2))
    assert web2.admin_state == DRAINED and web2.drain_cut == 2


async def test_once_a_cut_is_asked_the_drain_ends_with_its_answer_not_with_idle(plane):
    """With workers, one worker's cut empties the node before every worker has answered."""
    control, data = plane
    web2 = control.pool.backends["web2"]
    control.set_admin_state(web2, "drain")
    report(control, web2=(1, 0))
    control.tick(control.now() + 31.0)
    assert data.cuts == ["web2"]
    report(control, web2=(0, 0))                        # nothing in flight, the cut not answered yet
    assert web2.admin_state == DRAINING
    report(control, web2=(0, 0, None, [], 1))
    assert web2.admin_state == DRAINED and web2.drain_cut == 1


@pytest.mark.parametrize("outcomes, ejected", [
    ([[True, 3]], True),
    ([[True, 2], [False, 1], [True, 2]], False),        # a success between breaks the run
    ([[True, 2]], False),
])
async def test_passive_outcomes_are_replayed_in_order(plane, outcomes, ejected):
    control, data = plane
    report(control, web3=(0, 0, None, outcomes, None))
    web3 = control.pool.backends["web3"]
    assert (web3.health == EJECTED) is ejected
    assert data.node("web3").takes_traffic is not ejected


async def test_a_run_split_across_reports_still_counts(plane):
    control, _ = plane
    report(control, web3=(0, 0, None, [[True, 2]], None))
    report(control, web3=(0, 0, None, [[True, 1]], None))
    assert control.pool.backends["web3"].health == EJECTED


async def test_stats_deltas_add_up(plane):
    control, _ = plane
    for _ in range(2):
        delta = StatsDelta()
        for status in (200, 200, 503):
            delta.record("v1", status, 0.010, 1000.0)
        delta.errors = 1
        report(control, web1=(0, 0, delta, [], None), failed={"503": 1})
    web1 = control.pool.backends["web1"]
    assert web1.requests == 6 and web1.errors == 2
    assert web1.stats.by_class["v1"] == [0, 4, 0, 0, 2]
    assert sum(web1.stats.window.counts(1000.0).values()) == 6
    assert control.stats.failed == Counter({"503": 2})


async def test_reload_reaches_the_data_plane_and_keeps_runtime_states(plane, tmp_path):
    control, data = plane
    control.set_admin_state(control.pool.backends["web1"], "maint")
    changes = control.reload(parse_config(CONFIG.replace("web3, address: '127.0.0.1:9003'",
                                                         "web3, address: '127.0.0.1:9013'")
                                          + "retries: 4\n"))
    assert changes == ["web3: address 127.0.0.1:9003 -> 127.0.0.1:9013"]
    assert data.configs[-1].retries == 4 and data.node("web3").port == 9013
    assert control.pool.backends["web1"].admin_state != READY


async def test_a_removed_backend_drains_then_leaves(plane):
    control, data = plane
    report(control, web2=(1, 0))
    changes = control.reload(parse_config(CONFIG.replace("  - {name: web2, address: '127.0.0.1:9002'}\n", "")))
    assert changes == ["removed web2 (draining; dropped when drained)"]
    report(control, web2=(0, 0))
    assert "web2" not in control.pool.backends
    assert [n.name for n in data.views[-1].nodes] == ["web1", "web3"]


# Admin commands, reloads and the state file change a node's settings through these alone.
SETTINGS = [
    ("set_version", ("v2",), lambda view: view.version == "v2"),
    ("set_weight", (7,), lambda view: view.effective_weight == 7),
    ("set_max_conns", (3,), lambda view: view.max_conns == 3),
    ("set_address", (("127.0.0.1", 9011),), lambda view: view.port == 9011),
]


@pytest.mark.parametrize("method, args, shows", SETTINGS, ids=[row[0] for row in SETTINGS])
async def test_a_setting_changed_through_control_reaches_the_data_plane(plane, method, args, shows):
    control, data = plane
    published = len(data.views)
    getattr(control, method)(control.pool.backends["web2"], *args)
    assert len(data.views) == published + 1 and shows(data.node("web2"))


async def test_a_version_set_at_run_time_is_a_claim_and_a_target_starts_a_move(plane):
    control, data = plane
    control.set_version(control.pool.backends["web1"], "v2")
    assert control.pool.backends["web1"].version_pending and control.pool.move_in_progress()
    control.set_target("v2")
    assert control.pool.target == "v2" and data.views[-1].versions[-1] == "v2"
