"""The status page's model and first paint (lb/core/statusview.py), with `now` passed in."""

import json

import pytest

from lb.core.statusview import HISTORY_S, History, cell, move_text, render, why_out


def test_history_keeps_requests_per_second_per_version_and_each_nodes_window():
    history = History()
    history.sample(100.0, {"v1": 0}, {"web1": (0, 0)})
    history.sample(101.0, {"v1": 50}, {"web1": (50, 5)})
    history.sample(103.0, {"v1": 150, "v2": 20}, {"web1": (150, 5), "web2": (20, 0)})
    chart = history.chart()
    assert chart["ago_s"] == [2.0, 0.0]
    assert chart["versions"] == {"v1": [50.0, 50.0], "v2": [0.0, 10.0]}      # a new version: zeros before
    assert history.node_rates("web1") == (50.0, 0.0333)
    assert history.node_rates("web2") == (0.0, None)          # one sample: no rate yet
    assert history.node_rates("gone") == (0.0, None)


def test_history_is_bounded_and_forgets_versions_and_nodes_that_went():
    history = History()
    for second in range(HISTORY_S + 150):
        history.sample(float(second), {"v1": second * 10} if second < 100 else {"v1": 990}, {"web1": (second, 0)})
    assert len(history.times) == HISTORY_S
    assert "v1" not in history.rates                          # nothing served over the whole window
    history.sample(10_000.0, {}, {})
    assert history.nodes == {}


def test_a_counter_that_went_down_counts_as_nothing_not_a_negative_rate():
    history = History()
    history.sample(1.0, {"v1": 100}, {"web1": (100, 0)})
    history.sample(2.0, {"v1": 10}, {"web1": (10, 0)})
    assert history.chart()["versions"] == {}                  # all zero: dropped
    assert history.node_rates("web1") == (0.0, None)


@pytest.mark.parametrize("node, why", [
    ({"state": "ready", "health": "up", "weight": 100}, None),
    ({"state": "draining", "health": "up", "weight": 100}, "draining by an operator"),
    ({"state": "drained", "health": "down", "weight": 100}, "drained by an operator"),
    ({"state": "maint", "health": "up", "weight": 100}, "in maintenance"),
    ({"state": "ready", "health": "ejected", "weight": 100}, "ejected after failures"),
    ({"state": "ready", "health": "drain_requested", "weight": 100}, "asked to be drained"),
    ({"state": "ready", "health": "down", "weight": 100}, "failing its health checks"),
    ({"state": "ready", "health": "version_mismatch", "weight": 100}, "reports another version"),
    ({"state": "ready", "health": "up", "weight": 0}, "weight 0"),
])
def test_why_a_node_is_out_is_said_in_words(node, why):
    assert why_out(node) == why


@pytest.mark.parametrize("key, value, text", [
    ("error_rate", 0.0333, "3.3%"), ("share", 1.0, "100.0%"), ("capacity", 200.0, "200"),
    ("why_out", None, ""), ("p99_ms", None, "–"), ("weight", 100, "100"),
])
def test_a_cell_is_written_as_the_script_writes_it(key, value, text):
    assert cell(key, value) == text


def snapshot(**changes) -> dict:
    base = {"time": 1.0, "time_iso": "2026-12-03T21:00:00Z",
            "lb": {"version": "1.0", "pid": 7, "started_iso": "2026-12-03T20:00:00Z", "workers": 2, "panic": False},
            "nodes": [{"name": "web1", "version": "v1", "state": "drained", "health": "up", "weight": 100,
                       "inflight": 0, "rps": 1.5, "p99_ms": 2.0, "error_rate": None,
                       "why_out": "drained by an operator"}],
            "versions": [{"version": "v1", "nodes": 1, "ready": 0, "capacity": 0.0, "share": None,
                          "pinned_requests": 0}],
            "move": {"target": None, "in_progress": None, "nodes": 1, "on_target": 0},
            "chart": {"ago_s": [], "versions": {}}}
    return {**base, **changes}


def test_the_first_paint_has_the_tables_headers_and_the_reason_in_words():
    page = render(snapshot())
    assert '<th scope="col">Out because</th>' in page and '<caption id="nodes-title">Nodes</caption>' in page
    assert '<td data-key="state" class="drained">drained</td>' in page
    assert '<td data-key="why_out">drained by an operator</td>' in page
    assert '<link rel="icon" href="data:,">' in page            # no favicon request, no 404 in the console


def test_the_page_escapes_what_it_shows_and_the_data_it_carries():
    page = render(snapshot(lb={"version": "<b>x</b>", "pid": 7, "started_iso": "</script><script>alert(1)",
                               "workers": 1, "panic": True}))
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "PANIC" in page
    data = page[page.index('<script id="first" type="application/json">') + 43:]
    data = data[:data.index("</script>")]
    assert json.loads(data)["lb"]["started_iso"] == "</script><script>alert(1)"


@pytest.mark.parametrize("text", ["<!--<script>", "</script>", "a & b > c", "<!-- x -->"])
def test_the_data_the_page_carries_cannot_end_or_bend_its_script_element(text):
    """An HTML parser ends a script element at "</script" and, after "<!--<script", waits for
    two of them: the data holds no "<", ">" or "&" (JSON says them as \\u003c and so on)."""
    page = render(snapshot(deploy={"at": 0.0, "note": {"to": text, "phase": text}}))
    start = page.index('<script id="first" type="application/json">') + 43
    data = page[start:page.index("</script>", start)]
    assert not set("<>&") & set(data)
    assert json.loads(data)["deploy"]["note"]["to"] == text


def test_a_versions_share_is_of_the_last_ten_seconds():
    history = History()
    for second in range(30):
        history.sample(float(second), {"v1": second * 100, "v2": max(second - 25, 0) * 100}, {})
    assert history.shares() == {"v1": 0.7143, "v2": 0.2857}       # 10 s: v1 1000 requests, v2 400 (4 s)
    assert History().shares() == {}


@pytest.mark.parametrize("move, text", [
    ({"target": None, "in_progress": None, "nodes": 3, "on_target": 0}, "No version move declared."),
    ({"target": "v2", "in_progress": "the target is v2 and web3 is on v1", "nodes": 3, "on_target": 2},
     "Moving to v2: 2 of 3 nodes on it. In progress: the target is v2 and web3 is on v1."),
    ({"target": "v2", "in_progress": None, "nodes": 3, "on_target": 3}, "Moving to v2: 3 of 3 nodes on it. Done."),
])
def test_the_version_move_in_words(move, text):
    assert move_text(move) == text


def test_the_page_loads_its_own_files_and_offers_actions_only_with_a_csrf_value():
    page = render(snapshot())
    assert '<script src="status.js"></script>' in page and '<link rel="stylesheet" href="status.css">' in page
    assert "<form" not in page and "csrf" not in page
    page = render(snapshot(), csrf="s3cr3t<>")
    assert '<input type="hidden" name="csrf" value="s3cr3t&lt;&gt;">' in page
    assert '<label for="action-name">Node</label>' in page and "<option>web1</option>" in page


def test_users_pinned_are_pins_handed_out_net_of_moves():
    from collections import Counter

    from lb.core.statusview import pinned_users
    pins = {"assignments": Counter({"v1": 10, "v2": 3}),
            "migrations": Counter({("v1", "v2", "forward"): 4, ("v2", "v1", "back"): 1, ("v0", "v1", "forward"): 2})}
    assert pinned_users(pins) == {"v1": 10 - 4 + 1 + 2, "v2": 3 + 4 - 1, "v0": 0}     # never below 0
