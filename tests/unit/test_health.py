"""health.py decisions, with `now` passed in: rise/fall, version check, ejection, slow start."""

import pytest

from lb.core import health
from lb.core.config import BackendConfig
from lb.core.nodes import DOWN, DRAINED, DRAINING, EJECTED, MAINT, READY, UP, VERSION_MISMATCH, Node, Pool, transition

RISE, FALL = 2, 3


def node(name="web1", version="v1", health_state=UP, weight=100):
    b = Node(BackendConfig(name=name, address=("127.0.0.1", 9001), version=version, weight=weight))
    transition(b, "start", 0.0)
    b.health = health_state
    return b


# (start health, sequence of check results, expected health after each)
# a result is "ok", "fail", or a reported version string on a passing check
CHECKS = [
    (UP, ["fail", "fail", "fail"], [UP, UP, DOWN]),
    (UP, ["fail", "fail", "ok", "fail", "fail"], [UP, UP, UP, UP, UP]),
    (DOWN, ["ok", "ok"], [DOWN, UP]),
    (DOWN, ["ok", "fail", "ok", "ok"], [DOWN, DOWN, DOWN, UP]),
    (UP, ["v1", "v1"], [UP, UP]),
    (UP, ["v2"], [VERSION_MISMATCH]),
    (DOWN, ["v2", "v2", "v2"], [VERSION_MISMATCH] * 3),
    (UP, ["v2", "v1", "v1"], [VERSION_MISMATCH, VERSION_MISMATCH, UP]),
    (UP, ["v2", "fail"], [VERSION_MISMATCH, DOWN]),
    (EJECTED, ["ok", "ok", "ok"], [EJECTED] * 3),
]


@pytest.mark.parametrize("start, results, expected", CHECKS)
def test_rise_fall_and_version_check(start, results, expected):
    b = node(health_state=start)
    seen = []
    for i, result in enumerate(results):
        ok = result != "fail"
        version = result if result.startswith("v") else None
        health.record_check(b, ok, version, now=float(i), rise=RISE, fall=FALL)
        seen.append(b.health)
    assert seen == expected


def test_coming_up_starts_the_ramp():
    b = node(health_state=DOWN)
    health.record_check(b, True, None, now=5.0, rise=1, fall=1)
    assert b.health == UP and b.hstate.ramp_start == 5.0


@pytest.mark.parametrize("elapsed, factor", [(0.0, 0.1), (5.0, 0.55), (9.0, 0.91), (10.0, 1.0), (99.0, 1.0)])
def test_slow_start_is_linear_from_ten_percent(elapsed, factor):
    b = node(weight=200)
    b.hstate.ramp_start = 100.0
    still = health.ramp(b, now=100.0 + elapsed, slow_start_s=10.0)
    assert b.ramp_factor == pytest.approx(factor)
    assert b.effective_weight == pytest.approx(200 * factor)
    assert still == (elapsed < 10.0)


def test_slow_start_zero_means_full_weight_at_once():
    b = node()
    b.hstate.ramp_start = 0.0
    assert health.ramp(b, now=0.0, slow_start_s=0.0) is False and b.effective_weight == 100


def make_pool(count=3, version="v1"):
    pool = Pool([BackendConfig(name=f"web{i}", address=("h", 9000 + i), version=version)
                 for i in range(1, count + 1)])
    for b in pool.backends.values():
        transition(b, "start", 0.0)
    return pool


def fail(b, pool, now, times, failures=3, eject_s=10.0):
    peers = list(pool.backends.values())
    return [health.record_response(b, True, now, failures, eject_s, peers) for _ in range(times)]


def test_consecutive_failures_eject_and_a_success_resets():
    pool = make_pool()
    b = pool.backends["web1"]
    assert fail(b, pool, 0.0, 2) == [False, False]
    health.record_response(b, False, 0.0, 3, 10.0, [])
    assert fail(b, pool, 0.0, 2) == [False, False] and b.health == UP
    assert fail(b, pool, 0.0, 1) == [True]
    assert b.health == EJECTED and b.hstate.ejected_until == 10.0


def test_ejection_ends_down_and_repeats_double_up_to_a_cap():
    pool = make_pool()
    b = pool.backends["web1"]
    now, durations = 0.0, []
    for _ in range(7):
        assert fail(b, pool, now, 3)[-1] is True
        durations.append(b.hstate.ejected_until - now)
        now = b.hstate.ejected_until
        assert health.end_ejections(pool.backends.values(), now - 0.001) == []
        assert health.end_ejections(pool.backends.values(), now) == [b]
        assert b.health == DOWN and b.hstate.passes == 0
        b.health = UP                      # it passed its checks again
    assert durations == [10.0, 20.0, 40.0, 80.0, 160.0, 160.0, 160.0]


def test_doubling_resets_after_a_long_good_spell():
    pool = make_pool()
    b = pool.backends["web1"]
    fail(b, pool, 0.0, 3)
    health.end_ejections(pool.backends.values(), 10.0)
    b.health = UP
    fail(b, pool, 10.0 + 10 * 10.0 + 1, 3)
    assert b.hstate.ejected_until - (10.0 + 10 * 10.0 + 1) == 10.0


def test_the_last_node_of_a_version_is_never_ejected():
    pool = make_pool(2)
    web1, web2 = pool.backends["web1"], pool.backends["web2"]
    transition(web2, "maint", 0.0)
    assert fail(web1, pool, 0.0, 10) == [False] * 10 and web1.health == UP
    other = make_pool(1, "v2")
    peers = [web1, web2, *other.backends.values()]   # a node of another version is no help
    assert health.record_response(web1, True, 0.0, 1, 10.0, peers) is False


def test_passive_failures_zero_disables_ejection():
    pool = make_pool()
    b = pool.backends["web1"]
    assert fail(b, pool, 0.0, 50, failures=0) == [False] * 50


@pytest.mark.parametrize("state, checked", [(READY, True), (DRAINING, True), (DRAINED, False), (MAINT, False)])
def test_which_nodes_are_checked(state, checked):
    b = node()
    for event in {READY: [], DRAINING: ["drain"], DRAINED: ["drain", "idle"], MAINT: ["maint"]}[state]:
        transition(b, event, 0.0)
    assert health.should_check(b) is checked


def test_start_checking_takes_a_node_out_until_it_passes():
    b = node()
    health.start_checking(b)
    assert b.health == DOWN and not b.takes_traffic
    health.record_check(b, True, None, 0.0, rise=2, fall=3)
    assert not b.takes_traffic
    health.record_check(b, True, None, 1.0, rise=2, fall=3)
    assert b.takes_traffic


# -- the version rule: adopt a stale label, protect during a version move, never the whole pool --

def version_pool(nodes, target=None):
    """nodes: "name:label[*][/state][@health]" (`*`: the label was set at run time, pending)."""
    pool = Pool([])
    for spec in nodes:
        rest, _, health_state = spec.partition("@")
        rest, _, state = rest.partition("/")
        name, _, label = rest.partition(":")
        b = node(name, label.rstrip("*"), health_state or UP)
        pool.backends[name] = b
        pool.relabel(b, b.version, pending=label.endswith("*"))
        if state == MAINT:
            transition(b, "maint", 0.0)
    if target:
        pool.set_target(target)
    return pool


NO_MOVE, NOTHING_ELSE = health.NO_MOVE, health.NOTHING_ELSE

# (case, pool, target, check on web1: reported version or "fail",
#  web1's label after, its health after, why it was adopted or None)
VERSION_RULE = [
    ("a stale config, no deploy: adopted", ["web1:v1", "web2:v1"], None, "v2", "v2", UP, NO_MOVE),
    ("the label right: nothing to do", ["web1:v1", "web2:v1"], None, "v1", "v1", UP, None),
    ("no version header: nothing to compare", ["web1:v1", "web2:v1"], None, None, "v1", UP, None),
    ("a failing check adopts nothing", ["web1:v1", "web2:v1"], None, "fail", "v1", UP, None),
    ("set version not yet confirmed: protected", ["web1:v2*", "web2:v1"], None, "v1", "v2", VERSION_MISMATCH, None),
    ("another node's claim pending: protected", ["web1:v1", "web2:v2*"], None, "v3", "v1", VERSION_MISMATCH, None),
    ("a deploy's target not reached: protected", ["web1:v2", "web2:v1"], "v2", "v1", "v2", VERSION_MISMATCH, None),
    ("an untouched node mid-deploy: protected", ["web1:v1", "web2:v2"], "v2", "v3", "v1", VERSION_MISMATCH, None),
    ("the target reached (maint apart): adopted", ["web1:v2", "web2:v2", "web3:v1/maint"], "v2", "v3", "v3", UP,
     NO_MOVE),
    ("the only node, mid-move: adopted, not 503", ["web1:v2*"], "v2", "v1", "v1", UP, NOTHING_ELSE),
    ("the others all down, mid-move: adopted", ["web1:v2*", "web2:v1@down"], None, "v1", "v1", UP, NOTHING_ELSE),
    ("a returning node, no move: adopted, still checked", ["web1:v1@down", "web2:v1"], None, "v2", "v2", DOWN,
     NO_MOVE),
]


@pytest.mark.parametrize("case, nodes, target, reported, label, health_after, why", VERSION_RULE,
                         ids=[row[0] for row in VERSION_RULE])
def test_the_version_rule(case, nodes, target, reported, label, health_after, why):
    pool = version_pool(nodes, target)
    web1 = pool.backends["web1"]
    ok = reported != "fail"
    outcome = health.apply_check(pool, web1, ok, reported if ok else None, 1.0, rise=RISE, fall=FALL)
    assert (web1.version, web1.health) == (label, health_after)
    assert [(a.name, a.why) for a in outcome.adopted] == ([("web1", why)] if why else [])
    if why:
        assert outcome.adopted[0].labelled != label and outcome.adopted[0].reported == label
        assert label in pool.versions and not web1.version_pending


@pytest.mark.parametrize("nodes, target, move", [
    (["web1:v1", "web2:v1"], None, None),
    (["web1:v1", "web2:v2*"], None, "web2 was set to v2 at run time and no check has confirmed it yet"),
    (["web1:v1", "web2:v2"], "v2", "the target is v2 and web1 is on v1"),
    (["web1:v1/maint", "web2:v2"], "v2", None),
    (["web1:v2", "web2:v2"], "v2", None),
])
def test_when_a_version_move_is_in_progress(nodes, target, move):
    assert version_pool(nodes, target).move_in_progress() == move


def test_a_check_confirms_a_claim_and_ends_the_move():
    pool = version_pool(["web1:v2*", "web2:v1"])
    web1 = pool.backends["web1"]
    health.apply_check(pool, web1, True, "v2", 1.0, rise=RISE, fall=FALL)
    assert not web1.version_pending and pool.move_in_progress() is None
    health.apply_check(pool, web1, True, "v3", 2.0, rise=RISE, fall=FALL)     # later, no move: adopted
    assert web1.version == "v3" and web1.health == UP


def test_every_node_wrong_mid_move_the_last_check_adopts_them_all():
    """A deploy's target is declared, and every backend reports a third version: one node at a
    time goes out while the others serve, and the check that would leave none adopts all."""
    pool = version_pool(["web1:v1", "web2:v1", "web3:v1"], target="v2")
    seen = []
    for i, name in enumerate(["web1", "web2", "web3"]):
        outcome = health.apply_check(pool, pool.backends[name], True, "v3", float(i), rise=RISE, fall=FALL)
        seen.append((sum(b.takes_traffic for b in pool.backends.values()), len(outcome.adopted)))
    assert seen == [(2, 0), (1, 0), (3, 3)]
    assert {b.version for b in pool.backends.values()} == {"v3"}
    assert {a.why for a in outcome.adopted} == {NOTHING_ELSE}


def test_unstrand_leaves_a_pool_alone_while_any_node_serves():
    pool = version_pool(["web1:v2*@version_mismatch", "web2:v1"])
    pool.backends["web1"].hstate.reported_version = "v1"
    assert health.unstrand(pool, 0.0) == []
    transition(pool.backends["web2"], "maint", 0.0)
    assert [a.name for a in health.unstrand(pool, 0.0)] == ["web1"]
    assert pool.backends["web1"].takes_traffic and pool.backends["web1"].version == "v1"
