"""core/merge.py: many workers' reports in, one report out, as the control plane needs it.
No processes, no channels: members are plain objects."""

from collections import Counter

import pytest

from lb.core.merge import ReportMerge, share, view_for
from lb.core.planes import NodeReport, NodeView, Report, RoutingView
from lb.core.stats import StatsDelta

VIEW = RoutingView(3, (NodeView("web1", "127.0.0.1", 1, "v1", 100.0, True, False, 3),
                       NodeView("web2", "127.0.0.1", 2, "v1", 100.0, True, False, 0)), ("v1",))
W0, W1, OLD = "worker 0", "worker 1", "old master"


def node_report(inflight=0, tunnels=0, requests=0, cut=None, outcomes=()):
    stats = StatsDelta()
    for _ in range(requests):
        stats.record("v1", 200, 0.01, 100.0)
    return NodeReport(inflight, tunnels, stats, list(outcomes), cut)


def report(generation, clients=0, **nodes):
    return Report(generation, {name: nodes.get(name, node_report()) for name in ("web1", "web2")},
                  Counter(), 0, None, clients, 0)


def test_counts_of_now_are_sums_of_each_members_latest_and_deltas_pass_through():
    merge = ReportMerge()
    merged = [merge.report(W0, report(5, clients=3, web1=node_report(inflight=2, requests=10)), VIEW),
              merge.report(W1, report(5, clients=4, web1=node_report(inflight=1, requests=7)), VIEW),
              merge.report(W0, report(5, clients=1, web1=node_report(inflight=0, requests=2)), VIEW)]
    assert merged[-1].nodes["web1"].inflight == 0 + 1 and merged[-1].clients == 1 + 4
    assert [m.nodes["web1"].stats.requests for m in merged] == [10, 7, 2]   # each delta once


# (generation reported by W0, by W1) -> the merged generation: the oldest any live member applied
@pytest.mark.parametrize("g0, g1, merged", [(7, 6, 6), (6, 7, 6), (7, 7, 7), (8, None, 8)])
def test_the_generation_is_the_oldest_any_live_member_applied(g0, g1, merged):
    merge = ReportMerge()
    if g1 is not None:
        merge.report(W1, report(g1), VIEW)
    assert merge.report(W0, report(g0), VIEW).generation == merged


def test_with_no_report_yet_the_generation_is_the_views():
    assert ReportMerge().now(VIEW).generation == VIEW.generation and ReportMerge().now(None).generation == 0


# Each case: the members asked, then (member, its answer: a number closed, or "gone"), and the
# cut the merged report carries after each answer (None: not complete yet).
@pytest.mark.parametrize("asked, answers", [
    ([W0, W1], [(W0, 2, None), (W1, 1, 3)]),
    ([W0, W1], [(W1, 0, None), (W0, 4, 4)]),
    ([W0, W1], [(W0, 2, None), (W1, "gone", 2)]),       # a member that exits answers with nothing
    ([W0, OLD], [(OLD, "gone", None), (W0, 5, 5)]),      # gone with nothing to say: no report
])
def test_a_cut_completes_when_every_member_asked_answered_with_the_sum(asked, answers):
    merge = ReportMerge()
    assert merge.cut("web2", asked, VIEW) is None
    for member, answer, expected in answers:
        if answer == "gone":
            merged = merge.gone(member, VIEW)
        else:
            merged = merge.report(member, report(3, web2=node_report(cut=answer)), VIEW)
        assert (merged.nodes["web2"].cut if merged is not None else None) == expected


def test_a_cut_nobody_carries_is_complete_at_once_with_nothing_closed():
    assert ReportMerge().cut("web2", [], VIEW).nodes["web2"].cut == 0


def test_a_member_that_exits_leaves_the_sums_and_one_that_never_reported_changes_nothing():
    merge = ReportMerge()
    merge.report(W0, report(3, web1=node_report(inflight=2)), VIEW)
    merge.report(W1, report(3, web1=node_report(inflight=5)), VIEW)
    assert merge.gone(W1, VIEW).nodes["web1"].inflight == 2           # its requests died with it
    assert merge.gone("never reported", VIEW) is None


def test_a_member_that_joins_with_a_report_counts_until_it_sends_its_own():
    merge = ReportMerge()
    merge.join(OLD, report(2, clients=7, web1=node_report(inflight=4)))
    merged = merge.report(W0, report(3, web1=node_report(inflight=1)), VIEW)
    assert (merged.nodes["web1"].inflight, merged.clients, merged.generation) == (5, 7, 2)
    merge.join(W1)                                                    # no report: counts nothing
    assert merge.now(VIEW).nodes["web1"].inflight == 5


def test_a_collect_is_done_once_every_member_asked_reported_or_is_gone():
    merge = ReportMerge()
    merge.collect("first", [W0, W1])
    merge.collect("second", [W0])
    merge.report(W0, report(1), VIEW)
    assert merge.collected() == ["second"]
    merge.gone(W1, VIEW)
    assert merge.collected() == ["first"] and merge.collected() == []


def test_what_is_true_now_names_every_node_of_the_view_and_of_the_reports():
    merge = ReportMerge()
    merge.report(W0, Report(3, {"web9": node_report(inflight=1)}, Counter(), 0, None, 0, 0), VIEW)
    now = merge.now(VIEW, {"web2": 4})
    assert sorted(now.nodes) == ["web1", "web2", "web9"] and now.nodes["web2"].cut == 4
    assert all(got.stats.empty for got in now.nodes.values())


@pytest.mark.parametrize("total, count, shares", [
    (10, 2, [5, 5]), (11, 2, [6, 5]), (3, 2, [2, 1]), (1, 2, [1, 1]), (7, 3, [3, 2, 2]), (5, 1, [5]),
])
def test_max_conns_is_shared_out_each_worker_at_least_one(total, count, shares):
    assert [share(total, count, slot) for slot in range(count)] == shares


def test_each_worker_gets_its_share_of_max_conns_in_its_view():
    assert [n.max_conns for n in view_for(VIEW, 2, 0).nodes] == [2, 0]
    assert [n.max_conns for n in view_for(VIEW, 2, 1).nodes] == [1, 0]
    assert view_for(VIEW, 1, 0) is VIEW and view_for(None, 2, 0) is None
