"""`lb deploy`'s gates end to end: --verify before a node takes users, --check during a bake,
--min-requests' evidence (the Prometheus gates, on a real Prometheus, are in
test_prometheus_gates.py). Real lb, real backends, the deploy as the CLI."""

import json
import re
import time

import pytest

from test_deploy import FAST, Deploy, assert_all, run_deploy, servers, sessions

from conftest import PYTHON, Lb, wait_for_requests

# A smoke test that records what it saw: its environment, the node's row in lb while it runs,
# and what lb answered to a request that names the new version ($LB_VERSION_HEADER).
VERIFY = """
import json, os, sys, urllib.request
from lb.deploy.client import request
env = {k: v for k, v in os.environ.items() if k.startswith("LB_")}
row = request(sys.argv[2], "show server " + env["LB_NODE"], 10)["server"]
name, value = env["LB_VERSION_HEADER"].split(": ", 1)
req = urllib.request.Request(env["LB_URL"] + "/", headers={name: value})
with urllib.request.urlopen(req, timeout=10) as answer:
    body = json.loads(answer.read())
with open(os.path.join(sys.argv[1], env["LB_NODE"] + ".json"), "w") as out:
    json.dump({"env": env, "row": row, "answer": body}, out)
print("smoke ok on", env["LB_NODE"], "through lb:", body["node"], body["version"])
"""


def weights(lb) -> dict:
    return {name: row["weight"] for name, row in servers(lb).items()}


async def test_a_verify_runs_on_each_node_at_weight_0_and_reaches_its_version_through_lb(spawn, detached_backends,
                                                                                         tmp_path):
    nodes = detached_backends(3)
    lb = spawn(Lb, tmp_path, nodes.configs(), skew={"override_from": ["127.0.0.1/32"]}, **FAST)
    before = weights(lb)
    script = tmp_path / "verify.py"
    script.write_text(VERIFY)
    async with sessions(lb, 6) as users:
        await wait_for_requests(users, 50)
        code, deploy = await run_deploy(lb, "--to", "v2", "--update", nodes.update_command(), "--min-ready", "60%",
                                        "--verify", f"{PYTHON} {script} {tmp_path} {lb.socket_path}",
                                        "--bake", "500ms", "--canary-bake", "500ms",
                                        "--min-requests", "0")
    assert code == 0, (deploy.stderr, deploy.of("failed"))
    assert_all(lb, "v2")
    assert weights(lb) == before                   # each node got its weight back after its verify
    seen = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in nodes.names}
    for name, saw in seen.items():
        assert saw["env"]["LB_NODE"] == name and saw["env"]["LB_VERSION"] == "v2"
        assert saw["env"]["LB_OLD_VERSION"] == "v1" and saw["env"]["LB_PORT"] == str(nodes.ports[name])
        # no --lb-url, --version-header: lb's own, from its show info
        assert saw["env"]["LB_URL"] == lb.url and saw["env"]["LB_VERSION_HEADER"] == "X-Lb-Version: v2"
        # up and ready, but at weight 0: no user is sent to it while it is verified
        assert (saw["row"]["state"], saw["row"]["health"], saw["row"]["weight"]) == ("ready", "up", 0), saw["row"]
        assert saw["answer"]["version"] == "v2", saw          # lb routed the named version
    # the canary was the only v2 node, at weight 0: only the override could reach it, and did
    assert seen["web1"]["answer"]["node"] == "web1"
    verified = [e for e in deploy.of("gate") if e["kind"] == "verify"]
    assert [(e["name"], e["outcome"]) for e in verified] == [(n, "pass") for n in nodes.names]
    assert "smoke ok on web1 through lb: web1 v2" in (tmp_path / "deploy.log").read_text()
    state = json.loads((tmp_path / "deploy.state").read_text())
    assert state["bakes"][0]["gates"]["verify web1"]["outcome"] == "pass"


@pytest.mark.parametrize("override_from", [[], ["127.0.0.1/32"]])
async def test_a_verify_is_warned_when_lb_lets_nobody_reach_the_canary_through_it(spawn, detached_backends,
                                                                                  tmp_path, override_from):
    """skew.override_from empty: lb sends a request naming a version with no users to the old
    one, so a verify through $LB_URL would test v1 and pass. Said at the start (the plan's
    warnings: the live view and the log), not refused: a verify may test the node directly."""
    nodes = detached_backends(2)
    lb = spawn(Lb, tmp_path, nodes.configs(), skew={"override_from": override_from}, **FAST)
    code, deploy = await run_deploy(lb, "--to", "v2", "--update", nodes.update_command(), "--min-ready", "50%",
                                    "--verify", "true", "--bake", "200ms", "--canary-bake", "200ms",
                                    "--min-requests", "0")
    assert code == 0, (deploy.stderr, deploy.of("failed"))
    warnings = deploy.of("plan")[0]["warnings"]
    logged = (tmp_path / "deploy.log").read_text()
    if override_from:
        assert warnings == [] and "skew.override_from, which is empty" not in logged
    else:
        assert len(warnings) == 1 and warnings[0].startswith("--verify: lb honours $LB_VERSION_HEADER"), warnings
        assert "Verify the node itself at $LB_HOST:$LB_PORT, or set skew.override_from" in warnings[0]
        assert warnings[0] in json.loads(logged.split(" plan ", 1)[1].splitlines()[0])["warnings"]


async def test_a_verify_that_fails_rolls_the_canary_back_before_any_user_met_it(spawn, detached_backends, tmp_path):
    nodes = detached_backends(3)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    before = weights(lb)
    async with sessions(lb, 10) as users:
        await wait_for_requests(users, 50)
        code, deploy = await run_deploy(lb, "--to", "v2", "--update", nodes.update_command(),
                                        "--rollback", nodes.update_command(), "--min-ready", "60%",
                                        "--verify", 'echo "smoke: GET / answered 500 on $LB_NODE"; exit 4',
                                        "--min-requests", "0")
        await wait_for_requests(users, users.requests + 50)
    assert code == 1, deploy.stderr
    failure = deploy.summary["failure"]
    assert (failure["node"], failure["step"], failure["reason"]) == ("web1", "verify", "exited with status 4")
    assert failure["output"] == ["smoke: GET / answered 500 on web1"]
    assert "failed at web1, step verify: exited with status 4" in deploy.stderr
    assert "gate that failed: verify web1 on batch 1: exited with status 4" in deploy.stderr
    assert_all(lb, "v1")
    assert weights(lb) == before                   # the rollback gave the canary its weight back
    assert deploy.of("bake") == []                 # the batch never baked
    assert [(e["kind"], e["name"], e["outcome"]) for e in deploy.of("gate")] == [("verify", "web1", "fail")]
    assert users.failures == [] and {r.version for r in users.records} == {"v1"}   # no user met v2


async def test_a_check_that_fails_mid_bake_fails_the_batch(spawn, detached_backends, tmp_path):
    nodes = detached_backends(3)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    flag = tmp_path / "errors-appeared"
    deploy = await Deploy(lb, "--to", "v2", "--update", nodes.update_command(), "--rollback", nodes.update_command(),
                          "--min-ready", "60%", "--canary-bake", "30s", "--check-interval", "500ms",
                          "--check", f'test ! -e {flag} || {{ echo "3 ERROR lines on $LB_HOST"; exit 1; }}',
                          "--min-requests", "0").start()
    await deploy.wait_event(lambda e: e["event"] == "gate" and e["kind"] == "check" and e.get("when") == "interval")
    started = time.monotonic()
    flag.touch()                                   # the app starts logging errors
    assert await deploy.finish() == 1, deploy.stderr
    assert time.monotonic() - started < 10         # at the next interval, not at the bake's end
    failure = deploy.summary["failure"]
    assert (failure["node"], failure["step"]) == ("web1", "check")
    assert failure["reason"].startswith("--check #1 (test ! -e") and failure["reason"].endswith(
        "on web1 exited with status 1"), failure["reason"]
    assert failure["output"] == ["3 ERROR lines on 127.0.0.1"]
    assert failure["gate"]["kind"] == "check" and failure["gate"]["outcome"] == "fail"
    assert "gate that failed: check #1 on batch 1: exited with status 1" in deploy.stderr
    checks = [e for e in deploy.of("gate") if e["kind"] == "check"]
    assert checks[0]["when"] == "start" and checks[0]["outcome"] == "pass" and checks[-1]["outcome"] == "fail"
    assert deploy.of("baked") == []
    assert_all(lb, "v1")


@pytest.mark.parametrize("allow", [False, True])
async def test_a_thin_bake_fails_unless_thin_bakes_are_allowed(spawn, detached_backends, tmp_path, allow):
    nodes = detached_backends(2)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    code, deploy = await run_deploy(lb, "--to", "v2", "--update", nodes.update_command(),
                                    "--rollback", nodes.update_command(), "--min-ready", "50%",
                                    "--bake", "500ms", "--canary-bake", "500ms", "--bake-max", "1500ms",
                                    "--min-requests", "50", *(["--allow-thin-bakes"] if allow else []))
    extended = deploy.of("bake_extended")[0]           # nobody came: the bake went on, up to --bake-max
    assert extended["requests"] == 0 and extended["min_requests"] == 50 and extended["max_seconds"] == 1.5
    # the seconds judged are the bake's wall-clock time, rounded: 2s, or 3s on a busy machine
    thin = re.compile(r"thin bake: 0 requests judged in \d+s, --min-requests 50 not reached by --bake-max 1\.5s")
    if allow:
        assert code == 0, deploy.stderr
        assert_all(lb, "v2")
        assert len(deploy.summary["warnings"]) == 2 and all(thin.search(w) for w in deploy.summary["warnings"])
        assert [b["requests"] for b in deploy.summary["bakes"]] == [0, 0]
        assert all(b["ok"] and b["warnings"] for b in deploy.of("baked"))
        assert re.search(r"^    warning: " + thin.pattern, deploy.stderr, re.M), deploy.stderr
    else:
        assert code == 1, deploy.stderr
        failure = deploy.summary["failure"]
        assert failure["step"] == "bake" and thin.match(failure["reason"]), failure
        assert failure["gate"]["kind"] == "evidence" and failure["gate"]["outcome"] == "fail"
        assert_all(lb, "v1")
    judged = next(line for line in deploy.stderr.splitlines() if line.strip().startswith("node"))
    assert judged.split()[-1] == "judged"
