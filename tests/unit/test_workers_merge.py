"""The master's view of many workers (lb/control/workers.py) without processes: fake channels,
reports in, one merged report out."""

import asyncio
from collections import Counter

import pytest

from lb.control.workers import Worker, Workers, share
from lb.core.planes import NodeReport, Report, RoutingView, NodeView
from lb.core.stats import StatsDelta


class FakeChannel:
    def __init__(self):
        self.sent = []

    def send(self, kind, payload=None):
        self.sent.append((kind, payload))


def node_report(inflight=0, tunnels=0, requests=0, cut=None, outcomes=()):
    stats = StatsDelta()
    for _ in range(requests):
        stats.record("v1", 200, 0.01, 100.0)
    return NodeReport(inflight, tunnels, stats, list(outcomes), cut)


def worker_report(generation, clients=0, failed=None, **nodes):
    return Report(generation, {name: nodes.get(name, node_report()) for name in ("web1", "web2")},
                  Counter(failed or {}), 0, None, clients, 0)


@pytest.fixture
async def two_workers():
    merged = []
    workers = Workers(None, asyncio.get_running_loop(), [], merged.append, count=2)
    for slot in (0, 1):
        worker = Worker(slot, proc=None, channel=FakeChannel())
        workers.slots[slot] = worker
    return workers, merged


async def test_counts_of_now_are_sums_of_each_workers_latest_and_deltas_pass_through(two_workers):
    workers, merged = two_workers
    w0, w1 = workers.slots[0], workers.slots[1]
    workers._on_report(w0, worker_report(5, clients=3, web1=node_report(inflight=2, requests=10)))
    workers._on_report(w1, worker_report(5, clients=4, web1=node_report(inflight=1, requests=7)))
    workers._on_report(w0, worker_report(5, clients=1, web1=node_report(inflight=0, requests=2)))
    last = merged[-1]
    assert last.nodes["web1"].inflight == 0 + 1 and last.clients == 1 + 4
    assert [m.nodes["web1"].stats.requests for m in merged] == [10, 7, 2]   # each delta once


async def test_the_generation_is_the_oldest_any_live_worker_applied(two_workers):
    workers, merged = two_workers
    w0, w1 = workers.slots[0], workers.slots[1]
    workers._on_report(w0, worker_report(7))
    workers._on_report(w1, worker_report(6))
    assert merged[-1].generation == 6
    workers._on_report(w1, worker_report(7))
    assert merged[-1].generation == 7


async def test_a_cut_completes_when_every_worker_answered_with_the_sum(two_workers):
    workers, merged = two_workers
    w0, w1 = workers.slots[0], workers.slots[1]
    workers.cut("web2")
    assert ("cut", "web2") in w0.channel.sent and ("cut", "web2") in w1.channel.sent
    workers._on_report(w0, worker_report(3, web2=node_report(cut=2)))
    assert merged[-1].nodes["web2"].cut is None              # worker 1 has not answered
    workers._on_report(w1, worker_report(3, web2=node_report(cut=1)))
    assert merged[-1].nodes["web2"].cut == 3


async def test_a_worker_that_exits_answers_its_cut_with_nothing_and_leaves_the_sums(two_workers):
    workers, merged = two_workers
    w0, w1 = workers.slots[0], workers.slots[1]
    workers.stopping = True                                    # no restart in this test
    workers._on_report(w1, worker_report(3, web1=node_report(inflight=5)))
    workers.cut("web2")
    workers._on_report(w0, worker_report(3, web2=node_report(cut=2)))
    workers._on_closed(w1)
    assert merged[-1].nodes["web2"].cut == 2
    assert merged[-1].nodes["web1"].inflight == 0              # w1's requests died with it
    assert 1 not in workers.slots


async def test_collect_is_done_once_every_worker_reported(two_workers):
    workers, merged = two_workers
    w0, w1 = workers.slots[0], workers.slots[1]
    done = workers.collect()
    workers._on_report(w0, worker_report(1))
    assert not done.done()
    workers._on_report(w1, worker_report(1))
    assert done.done()


@pytest.mark.parametrize("total, count, shares", [
    (10, 2, [5, 5]), (11, 2, [6, 5]), (3, 2, [2, 1]), (1, 2, [1, 1]), (7, 3, [3, 2, 2]), (5, 1, [5]),
])
def test_max_conns_is_shared_out_each_worker_at_least_one(total, count, shares):
    assert [share(total, count, slot) for slot in range(count)] == shares


async def test_each_worker_gets_its_share_of_max_conns_in_its_view():
    workers = Workers(None, asyncio.get_running_loop(), [], lambda r: None, count=2)
    workers.view = RoutingView(1, (NodeView("web1", "127.0.0.1", 1, "v1", 100.0, True, False, 3),
                                   NodeView("web2", "127.0.0.1", 2, "v1", 100.0, True, False, 0)), ("v1",))
    assert [n.max_conns for n in workers.view_for(0).nodes] == [2, 0]
    assert [n.max_conns for n in workers.view_for(1).nodes] == [1, 0]
