"""The deploy's decisions, without I/O: options, plan, steps, verdicts, saved state."""

from fractions import Fraction

import pytest

from lb.core.errors import DeployError
from lb.deploy.plan import (COMMAND_INDEX, STEPS, Batch, DeployState, NodeProgress, Options, Sample,
                            check_servers, command_env, fill, judge, lb_made_failures, parse_percent, plan)


def servers(count=10, weight=100, **overrides):
    """`show servers` rows: web1..webN, v1, ready and up; overrides={'web3': {'state': 'maint'}}."""
    rows = [{"name": f"web{i}", "address": f"127.0.0.1:{9000 + i}", "version": "v1", "weight": weight,
             "state": "ready", "health": "up"} for i in range(1, count + 1)]
    for row in rows:
        row.update(overrides.get(row["name"], {}))
    return rows


def opts(**fields) -> Options:
    return Options(**{"to": "v2", "update": "deploy {host} {version}", **fields})


def names(batches):
    return [list(b.nodes) for b in batches]


@pytest.mark.parametrize("fields, expected", [
    ({}, [[f"web{i}"] for i in range(1, 11)]),                       # defaults: canary 1, batch 1
    ({"batch": "3"}, [["web1"], ["web2", "web3"], ["web4", "web5"], ["web6", "web7"], ["web8", "web9"],
                      ["web10"]]),                                     # 80 %: only 2 of 10 may be out
    ({"batch": "3", "min_ready": "70%"}, [["web1"], ["web2", "web3", "web4"], ["web5", "web6", "web7"],
                                          ["web8", "web9", "web10"]]),
    ({"batch": "3", "min_ready": "90%"}, [[f"web{i}"] for i in range(1, 11)]),   # one at a time
    ({"batch": "30%", "min_ready": "0%"}, [["web1"], ["web2", "web3", "web4"], ["web5", "web6", "web7"],
                                           ["web8", "web9", "web10"]]),
    ({"batch": "5%", "min_ready": "0%"}, [[f"web{i}"] for i in range(1, 11)]),   # rounds down, at least 1
    ({"canary": 0, "batch": "5", "min_ready": "50%"}, [["web1", "web2", "web3", "web4", "web5"],
                                                       ["web6", "web7", "web8", "web9", "web10"]]),
    ({"canary": 3, "batch": "4", "min_ready": "80%"}, [["web1", "web2"], ["web3"], ["web4", "web5"],
                                                       ["web6", "web7"], ["web8", "web9"], ["web10"]]),
])
def test_plan_batches(fields, expected):
    batches, notes = plan(servers(), opts(**fields))
    assert names(batches) == expected and notes == []
    canaries = fields.get("canary", 1)
    assert sum(len(b.nodes) for b in batches if b.canary) == canaries


def test_plan_skips_nodes_on_the_target_and_in_maint():
    rows = servers(5, web2={"version": "v2"}, web4={"state": "maint"})
    batches, notes = plan(rows, opts(min_ready="40%", batch="2"))   # 400 of 500 in service
    assert names(batches) == [["web1"], ["web3", "web5"]]
    assert notes == ["web4 is in maint: left alone"]


def test_plan_counts_weight_not_nodes():
    rows = servers(4, web1={"weight": 400})          # web1 alone is 400 of 700
    with pytest.raises(DeployError) as info:
        plan(rows, opts(min_ready="50%"))
    assert info.value.message == ("taking web1 out would leave 43% of the weight in service, under --min-ready 50%; "
                                  "--min-ready 42% would let it go")
    batches, _ = plan(servers(4, web4={"weight": 300}), opts(min_ready="50%", batch="3"))
    assert names(batches) == [["web1"], ["web2", "web3"], ["web4"]]      # spare 300 of 600


@pytest.mark.parametrize("count, suggested", [(2, "50%"), (3, "66%"), (4, "75%")])
def test_a_min_ready_refusal_names_the_value_that_works_for_the_pool(count, suggested):
    """Any pool of fewer than 5 equal nodes is refused at the default 80 %: say what would do."""
    with pytest.raises(DeployError) as info:
        plan(servers(count), opts(min_ready="80%"))
    assert info.value.message.endswith(f"; --min-ready {suggested} would let it go")
    batches, _ = plan(servers(count), opts(min_ready=suggested))      # and it does
    assert names(batches)[0] == ["web1"]


def test_a_pool_of_one_node_gets_no_suggestion_that_empties_it():
    with pytest.raises(DeployError) as info:
        plan(servers(1), opts(min_ready="10%"))
    assert "no --min-ready above 0% lets it go" in info.value.message


def test_a_node_already_out_of_service_costs_nothing():
    rows = servers(4, web1={"health": "down"})       # 300 of 400 in service; min 75 % = 300
    batches, _ = plan(rows, opts(min_ready="75%", batch="2"))
    # web1 goes first for free; once it is back, one node at a time fits
    assert names(batches) == [["web1"], ["web2"], ["web3"], ["web4"]]
    with pytest.raises(DeployError):
        plan(servers(4, web3={"health": "down"}), opts(min_ready="75%", canary=0))


@pytest.mark.parametrize("state", ["draining", "drained"])
def test_plan_refuses_a_node_someone_else_took_out(state):
    with pytest.raises(DeployError) as info:
        plan(servers(3, web2={"state": state}), opts(min_ready="0%"))
    assert info.value.message.startswith(f"web2 is {state}, not from this deploy")


@pytest.mark.parametrize("fields, message", [
    ({"to": "v 2"}, "--to: expected a version label"),
    ({"update": "  "}, "--update: expected a shell command"),
    ({"update": "deploy {hots}"}, "--update: unknown placeholder {hots}; known: {name}, {host}"),
    ({"rollback": "undo {vers}"}, "--rollback: unknown placeholder {vers}"),
    ({"batch": "0"}, "--batch: expected a number of nodes (3) or a percentage (30%), got '0'"),
    ({"batch": "three"}, "--batch: expected"),
    ({"batch": "150%"}, "--batch: expected a percentage"),
    ({"min_ready": "80"}, "--min-ready: expected a percentage (80%) or a fraction (0.8), got '80'"),
    ({"min_ready": "x%"}, "--min-ready: expected"),
    ({"canary": -1}, "--canary: expected 0 or more"),
    ({"max_error_rate": 2.0}, "--max-error-rate: expected a fraction"),
    ({"max_p99_ratio": 0.5}, "--max-p99-ratio: expected 1 or more"),
])
def test_bad_options_name_the_option(fields, message):
    with pytest.raises(DeployError) as info:
        opts(**fields)
    assert info.value.message.startswith(message), info.value.message


def test_percent_and_placeholders():
    assert parse_percent("80%", "-") == Fraction(4, 5) == parse_percent("0.8", "-")
    values = {"name": "web3", "host": "10.0.0.3", "port": 9003, "version": "v2", "old_version": "v1"}
    assert fill("ssh {host} deploy {version} (was {old_version}) on ${HOME} {port} {name}", values) == \
        "ssh 10.0.0.3 deploy v2 (was v1) on ${HOME} 9003 web3"
    assert command_env(values) == {"LB_NODE": "web3", "LB_HOST": "10.0.0.3", "LB_PORT": "9003",
                                   "LB_VERSION": "v2", "LB_OLD_VERSION": "v1"}
    assert opts(rollback=None).command("back") == "deploy {host} {version}"
    assert opts(rollback="undo {name}").command("back") == "undo {name}"


def test_substituted_values_are_shell_quoted():
    # check_servers refuses such values first; quoting is the second line of defence
    values = {"name": "web3", "host": "$(touch pwned)", "port": 9003, "version": "v2; rm -rf x",
              "old_version": "-oProxyCommand=x"}
    assert fill("ssh {host} deploy {version} {old_version}", values) == \
        "ssh '$(touch pwned)' deploy 'v2; rm -rf x' -oProxyCommand=x"


@pytest.mark.parametrize("field, value, message", [
    ("address", "evil $(touch pwned):80", "with HOST a host name or IP address"),
    ("address", "-oProxyCommand=touch:22", "with HOST a host name or IP address"),
    ("version", "v1\r\nSet-Cookie: x", "expected a version label"),
    ("name", "-web", "expected a name"),
])
def test_what_lb_lists_is_checked_before_it_reaches_a_shell(field, value, message):
    rows = servers(3)
    rows[1][field] = value
    with pytest.raises(DeployError) as info:
        check_servers(rows)
    assert "will not use" in info.value.message and message in info.value.message
    check_servers(servers(3))          # the normal case passes


# -- steps ----------------------------------------------------------------------------

def test_the_steps_are_the_designed_sequence():
    assert [s.name for s in STEPS["forward"]] == ["drain", "wait drained", "update", "set version",
                                                  "ready", "wait up", "verify"]
    assert [s.name for s in STEPS["back"]] == ["drain", "wait drained", "rollback", "set version",
                                               "ready", "wait up"]          # no verify on the way back
    assert [s.name for s in STEPS["back"]][COMMAND_INDEX] == "rollback"
    assert STEPS["forward"][COMMAND_INDEX].admin is None


@pytest.mark.parametrize("progress, plan_, touched", [
    (NodeProgress(), "none", False),
    (NodeProgress(running=True), "ready", False),                 # drain sent, maybe done
    (NodeProgress(done=2), "ready", False),                       # drained, update not begun
    (NodeProgress(done=2, running=True), "back", True),           # update began: may be half done
    (NodeProgress(done=3), "back", True),
    (NodeProgress(done=6), "back", True),                         # updated and up
    (NodeProgress(direction="back", done=1), "back", True),       # a rollback in progress goes on
])
def test_how_a_rollback_restores_a_node(progress, plan_, touched):
    assert progress.restore_plan() == plan_ and progress.code_touched == touched


def test_restart_at_ready_leaves_ready_and_wait_up():
    progress = NodeProgress(done=2)
    progress.restart_at_ready()
    assert progress.direction == "back" and [s.name for s in progress.steps[progress.done:]] == \
        ["ready", "wait up"]


# -- verdicts -----------------------------------------------------------------------------

BASE = Sample(requests=4000, errors=20, p99_ms=20.0, latency_requests=4000, label="v1")


@pytest.mark.parametrize("batch, baseline, lb_failed, ok, reason, p99_judged", [
    (Sample(200, 2, 22.0, 200), BASE, {}, True, None, False),                   # 1 % vs 0.5 %
    (Sample(200, 4, 22.0, 200), BASE, {}, False, "error rate 2.0% (4 of 200) against 0.5% on v1", False),
    (Sample(200, 20, 22.0, 200), None, {}, False, "error rate 10.0% (20 of 200) against 0.0% on no baseline",
     False),
    (Sample(1000, 0, 41.0, 1000), BASE, {}, False, "p99 41.0 ms against 20.0 ms on v1: 2.05x", True),
    (Sample(1000, 0, 39.0, 1000), BASE, {}, True, None, True),
    (Sample(999, 0, 900.0, 999), BASE, {}, True, None, False),                  # too few samples for a p99
    (Sample(1000, 0, 1.9, 1000), Sample(1000, 0, 0.2, 1000, label="v1"), {}, True, None, True),   # 1 ms floor
    (Sample(1000, 0, 30.0, 1000), Sample(999, 0, 1.0, 999, label="v1"), {}, True, None, False),   # baseline few
    (Sample(0, 0, None, 0), BASE, {}, True, None, False),                       # no traffic: nothing against it
    (Sample(200, 0, 20.0, 200), BASE, {"502": 1}, False, "lb failed 1 client request(s) during the batch (502: 1)",
     False),
])
def test_judge(batch, baseline, lb_failed, ok, reason, p99_judged):
    verdict = judge(batch, baseline, lb_failed, opts())
    assert verdict.ok == ok
    if reason:
        assert any(r.startswith(reason) for r in verdict.reasons), verdict.reasons
    assert verdict.numbers["requests"] == batch.requests
    assert (verdict.numbers["p99_ratio"] is not None) is p99_judged
    assert (verdict.numbers["p99_note"] is None) is p99_judged


def test_only_lb_made_failures_count_against_a_deploy():
    before = {"400": 3, "502": 1}
    after = {"400": 9, "408": 2, "431": 1, "502": 3, "503": 1, "cut": 1, "drain_deadline": 4}
    assert lb_made_failures(before, after) == {"502": 2, "503": 1, "cut": 1}
    assert lb_made_failures(after, after) == {}


def test_state_round_trips_and_rejects_strangers():
    state = DeployState(options=opts().to_dict(), batches=[Batch(("web1",), True), Batch(("web2", "web3"), False)],
                        old_versions={"web1": "v1"}, addresses={"web1": ("127.0.0.1", 9001)}, batch=1,
                        targets=["a.sock", "ssh://lb2/b.sock"], weights={"web1": 5})
    state.node("web2").done = 3
    state.node("web2").running = True
    back = DeployState.from_dict(state.to_dict())
    assert back.to_dict() == state.to_dict() and back.node("web2") == NodeProgress(done=3, running=True)
    assert Options(**back.options) == opts()
    assert (back.targets, back.weights) == (["a.sock", "ssh://lb2/b.sock"], {"web1": 5})
    older = {k: v for k, v in state.to_dict().items() if k not in ("targets", "weights")}   # before issue 19
    assert (DeployState.from_dict(older).targets, DeployState.from_dict(older).weights) == ([], {})
    for bad in ({}, {"format": 2}, {"format": 1, "phase": "dancing"}):
        with pytest.raises(DeployError):
            DeployState.from_dict(bad)


@pytest.mark.parametrize("after, expected", [
    ({"since": "T1", "servers": {"web1": {"requests": 12}}}, False),
    ({"since": "T2", "servers": {"web1": {"requests": 12}}}, True),      # lb's counters began again
    ({"since": "T1", "servers": {"web1": {"requests": 3}}}, True),       # ...within the same second
])
def test_a_restart_of_lb_between_two_snapshots_is_seen(after, expected):
    from lb.deploy.run import restarted
    assert restarted({"since": "T1", "servers": {"web1": {"requests": 10}}}, after) is expected
