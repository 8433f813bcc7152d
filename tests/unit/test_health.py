"""health.py decisions, with `now` passed in: rise/fall, version check, ejection, slow start."""

import pytest

from lb.core import health
from lb.core.config import BackendConfig, PassiveConfig
from lb.core.nodes import (DOWN, DRAIN_REQUESTED, DRAINED, DRAINING, EJECTED, MAINT, READY, UP, VERSION_MISMATCH, Node,
                           Pool, transition)

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


# -- a node asks to be drained (health.drain_on, X-Lb-Drain: 1) --------------------------------

@pytest.mark.parametrize("status, header, drain_on, said", [
    (200, False, (404,), health.PASS),
    (302, False, (404,), health.PASS),
    (404, False, (404,), health.DRAIN),
    (404, False, (), health.FAIL),
    (503, False, (404,), health.FAIL),
    (503, False, (404, 503), health.DRAIN),
    (200, True, (404,), health.DRAIN),             # the header, whatever the status
    (500, True, (), health.DRAIN),
])
def test_what_a_check_answer_says(status, header, drain_on, said):
    assert health.verdict(status, header, drain_on) == said


# (start health, check results: "ok" / "fail" / "drain", expected health after each); rise 2, fall 3
DRAIN_CHECKS = [
    (UP, ["drain"], [DRAIN_REQUESTED]),
    (UP, ["drain", "drain", "drain", "drain"], [DRAIN_REQUESTED] * 4),          # no failure: never down
    (UP, ["drain", "ok", "ok"], [DRAIN_REQUESTED, DRAIN_REQUESTED, UP]),       # `rise` 200s bring it back
    (UP, ["drain", "ok", "drain", "ok", "ok"], [DRAIN_REQUESTED] * 4 + [UP]),   # flapping: it stays out
    (UP, ["fail", "fail", "drain", "fail", "fail"], [UP, UP, DRAIN_REQUESTED, DRAIN_REQUESTED, DRAIN_REQUESTED]),
    (UP, ["drain", "fail", "fail", "fail"], [DRAIN_REQUESTED] * 3 + [DOWN]),    # then it stopped answering
    (DOWN, ["drain", "ok", "ok"], [DRAIN_REQUESTED, DRAIN_REQUESTED, UP]),
    (DOWN, ["drain", "fail", "ok"], [DRAIN_REQUESTED, DRAIN_REQUESTED, DRAIN_REQUESTED]),
    (VERSION_MISMATCH, ["drain"], [DRAIN_REQUESTED]),
    (EJECTED, ["drain", "ok"], [EJECTED, EJECTED]),                            # ejection runs its course
]


@pytest.mark.parametrize("start, results, expected", DRAIN_CHECKS)
def test_a_node_asking_to_be_drained(start, results, expected):
    b = node(health_state=start)
    b.hstate.passes = RISE if start == UP else 0
    seen = []
    for i, result in enumerate(results):
        health.record_check(b, result == "ok", None, now=float(i), rise=RISE, fall=FALL, drain=result == "drain")
        seen.append(b.health)
    assert seen == expected


def test_a_drain_request_takes_the_node_out_and_a_pass_brings_it_back_through_slow_start():
    b = node()
    health.record_check(b, False, None, 1.0, RISE, FALL, drain=True)
    assert not b.takes_traffic and b.admin_state == READY           # the operator's axis is untouched
    assert b.describe()["health"] == "drain_requested" and b.describe()["state"] == "ready"
    health.record_check(b, True, None, 2.0, RISE, FALL)
    assert not b.takes_traffic                                      # one pass is not `rise`
    health.record_check(b, True, None, 3.0, RISE, FALL)
    assert b.takes_traffic and b.hstate.ramp_start == 3.0


@pytest.mark.parametrize("events, results, takes", [
    (["ready"], ["drain"], False),                 # an operator's ready does not override the node
    (["drain"], ["ok"], False),                    # the node's 200 does not undo the operator's drain
    (["maint", "ready"], ["drain", "ok", "ok"], True),
    ([], ["drain", "ok", "ok"], True),
])
def test_the_nodes_request_and_the_operators_state_are_separate_axes(events, results, takes):
    b = node()
    for event in events:
        transition(b, event, 0.0)
        if event == "ready":
            health.start_checking(b)
    for i, result in enumerate(results):
        health.record_check(b, result == "ok", None, float(i), RISE, FALL, drain=result == "drain")
    assert b.takes_traffic is takes


# (nodes as name:version, which ask to be drained in order, which end up drain_requested)
LAST_OF_VERSION = [
    (["web1:v1", "web2:v1"], ["web1"], ["web1"]),
    (["web1:v1", "web2:v1"], ["web1", "web2"], ["web1"]),         # web2 is then v1's last: kept
    (["web1:v1", "web2:v2"], ["web2"], []),                       # v2's only node: its users stay
    (["web1:v1", "web2:v1", "web3:v2"], ["web1", "web2", "web3"], ["web1"]),   # a wrong health.path
]


@pytest.mark.parametrize("nodes, asking, drained", LAST_OF_VERSION)
def test_the_last_node_of_a_version_is_not_drained_at_its_own_request(nodes, asking, drained):
    pool = version_pool(nodes)
    for backend in pool.backends.values():
        backend.health = UP
    kept = []
    for name in asking:
        outcome = health.apply_check(pool, pool.backends[name], False, None, 1.0, rise=RISE, fall=FALL, drain=True)
        kept.append(outcome.kept)
    assert [n for n, b in pool.backends.items() if b.health == DRAIN_REQUESTED] == drained
    assert kept == [name not in drained for name in asking]
    assert all(b.health == UP for n, b in pool.backends.items() if n not in drained)


def test_a_drain_request_is_no_failure_for_passive_ejection():
    pool = make_pool()
    b = pool.backends["web1"]
    health.record_check(b, False, None, 0.0, RISE, FALL, drain=True)
    assert fail(b, pool, 0.0, 10) == [False] * 10 and b.health == DRAIN_REQUESTED


def test_a_drain_request_confirms_and_adopts_no_version():
    pool = version_pool(["web1:v1", "web2:v1"])
    outcome = health.apply_check(pool, pool.backends["web1"], True, "v2", 1.0, rise=RISE, fall=FALL, drain=True)
    assert outcome.adopted == () and pool.backends["web1"].version == "v1"
    assert pool.backends["web1"].health == DRAIN_REQUESTED


# -- passive.max_ejected: never eject the whole pool ---------------------------------------------

def weighted_pool(weights, version="v1"):
    pool = Pool([BackendConfig(name=f"web{i}", address=("h", 9000 + i), version=version, weight=w)
                 for i, w in enumerate(weights, 1)])
    for b in pool.backends.values():
        transition(b, "start", 0.0)
    return pool


# (weights, max_ejected, which nodes fail every request, which end up ejected)
MAX_EJECTED = [
    ([100, 100], 0.5, [1, 2], [1]),
    ([100, 100, 100], 0.5, [1, 2, 3], [1]),                   # a second would be 67%
    ([100, 100, 100, 100], 0.5, [1, 2, 3, 4], [1, 2]),
    ([100, 100, 100, 100], 0.25, [1, 2, 3, 4], [1]),
    ([100, 100, 100, 100], 1.0, [1, 2, 3, 4], [1, 2, 3]),      # never the last one taking traffic
    ([100, 100, 100, 100], 0.1, [1, 2], [1]),                 # one always may go, as in Envoy
    ([100, 100, 100, 100], 0.0, [1], []),                     # 0%: passive ejection off
    ([300, 100, 100, 100], 0.5, [2, 3, 4, 1], [2, 3, 4]),      # by capacity, not by count
    ([300, 100, 100, 100], 0.5, [1, 2], [1]),
    ([100], 0.5, [1], []),                                    # a one-node version keeps its node
]


@pytest.mark.parametrize("weights, cap, failing, ejected", MAX_EJECTED)
def test_passive_ejection_takes_out_at_most_max_ejected_of_a_version(weights, cap, failing, ejected):
    pool = weighted_pool(weights)
    peers = list(pool.backends.values())
    for _ in range(3):
        for i in failing:
            health.record_response(pool.backends[f"web{i}"], True, 0.0, 3, 10.0, peers, cap)
    assert [i for i, b in enumerate(peers, 1) if b.health == EJECTED] == ejected


def test_the_cap_counts_one_version_only_and_frees_up_when_an_ejection_ends():
    pool = weighted_pool([100, 100, 100, 100])
    other = weighted_pool([100, 100], version="v2")
    peers = [*pool.backends.values(), *other.backends.values()]
    web1, web2 = pool.backends["web1"], pool.backends["web2"]
    v2 = other.backends["web1"]
    v2.name = "v2-web1"
    assert fail(v2, other, 0.0, 3)[-1] is True                 # another version's ejection is its own
    for b in (web1, web2, pool.backends["web3"]):
        [health.record_response(b, True, 0.0, 3, 10.0, peers, 0.5) for _ in range(3)]
    assert [b.health for b in pool.backends.values()] == [EJECTED, EJECTED, UP, UP]
    assert health.end_ejections(peers, 10.0) == [web1, web2, v2]
    assert health.record_response(pool.backends["web3"], True, 10.0, 3, 10.0, peers, 0.5) is True


# -- passive.failure_rate: a node failing a share of its requests, not in a row ----------------

def passive(rate=0.5, window=10.0, min_requests=20, max_ejected=0.5, eject=10.0):
    return PassiveConfig(failures=3, eject=eject, max_ejected=max_ejected, failure_rate=rate, window=window,
                         min_requests=min_requests)


# (reports as (now, requests, failures), config, ejected after each report)
WINDOWS = [
    ([(0.0, 10, 5), (5.0, 10, 5), (10.0, 0, 0)], passive(), [False, False, True]),       # 50% of 20
    ([(0.0, 10, 5), (10.0, 9, 4)], passive(), [False, False]),                  # 9 of 19: too few requests
    ([(0.0, 100, 49), (10.0, 0, 0)], passive(), [False, False]),                # 49%: under the rate
    ([(0.0, 100, 90), (9.9, 0, 0), (10.0, 0, 0)], passive(), [False, False, True]),   # judged at the end
    ([(0.0, 100, 100), (10.0, 0, 0)], passive(rate=0.0), [False, False]),       # 0%: off
    ([(0.0, 30, 15), (2.0, 0, 0)], passive(window=2.0), [False, True]),
    ([(0.0, 30, 30), (10.0, 0, 0), (20.0, 30, 30)], passive(), [False, True, False]),  # ejected: not again
    # a window is over and forgotten: its failures do not count in the next one
    ([(0.0, 100, 10), (10.0, 0, 0), (12.0, 10, 10), (20.0, 5, 5)], passive(), [False] * 4),
]


@pytest.mark.parametrize("reports, config, expected", WINDOWS)
def test_a_node_failing_a_share_of_its_requests_over_a_window_is_ejected(reports, config, expected):
    pool = weighted_pool([100, 100, 100, 100])
    web1 = pool.backends["web1"]
    seen = [health.record_window(web1, served, failed, now, config, pool.backends.values())
            for now, served, failed in reports]
    assert seen == expected
    assert (web1.health == EJECTED) == any(expected)
    if any(expected):
        assert web1.hstate.ejected_until == reports[expected.index(True)][0] + config.eject


def test_the_failure_rate_keeps_to_max_ejected_and_the_last_node():
    pool = weighted_pool([100, 100, 100])
    peers = list(pool.backends.values())
    ejected = []
    for name in ("web1", "web2", "web3"):
        health.record_window(pool.backends[name], 50, 50, 0.0, passive(), peers)
        ejected.append(health.record_window(pool.backends[name], 0, 0, 10.0, passive(), peers))
    assert ejected == [True, False, False]                    # a second would be 67% of v1
    alone = weighted_pool([100], version="v2").backends["web1"]
    health.record_window(alone, 50, 50, 0.0, passive(), [alone])
    assert health.record_window(alone, 0, 0, 10.0, passive(), [alone]) is False


# -- health.panic: every node fails its checks ---------------------------------------------------

# (nodes "state@health" or "state@health:weight", enabled, in panic, the nodes routed to)
PANIC = [
    (["ready@up", "ready@down"], True, False, [0]),
    (["ready@down", "ready@down"], True, True, [0, 1]),
    (["ready@down", "ready@ejected"], True, True, [0, 1]),
    (["ready@down", "ready@down"], False, False, []),
    (["ready@down", "drained@up"], True, True, [0]),           # the operator's drain is honoured
    (["ready@down", "maint@down"], True, True, [0]),
    (["ready@down", "draining@up"], True, True, [0]),
    (["ready@down", "ready@drain_requested"], True, True, [0]),   # so is the node's own request
    (["ready@drain_requested"], True, False, []),
    (["maint@down", "drained@down"], True, False, []),
    (["ready@down:0", "ready@down"], True, True, [1]),         # weight 0 stays out
    (["ready@version_mismatch", "ready@down"], True, True, [1]),
]


@pytest.mark.parametrize("nodes, enabled, panic, routed", PANIC)
def test_panic_routes_to_the_failing_ready_nodes_only_when_none_is_up(nodes, enabled, panic, routed):
    weights = [int(spec.partition(":")[2] or 100) for spec in nodes]
    pool = weighted_pool(weights)
    for b, spec in zip(pool.backends.values(), nodes):
        state, _, rest = spec.partition("@")
        b.health = rest.partition(":")[0]
        for event in {"ready": [], "draining": ["drain"], "drained": ["drain", "idle"], "maint": ["maint"]}[state]:
            transition(b, event, 0.0)
    assert health.panic(pool.backends.values(), enabled) is panic
    pool.set_panic(panic)
    view = pool.view(1)
    assert [i for i, n in enumerate(view.nodes) if n.takes_traffic] == routed
    assert pool.version_capacity() == ({"v1": 100.0 * len(routed)} if routed else {})
