"""A fleet of lbs driven by one `lb deploy` (issue 19): real `lb serve` processes over the
same backends, users who pick an lb per request with one cookie jar (as DNS round-robin
clients do), and ssh:// targets through a stand-in `ssh` that runs the command locally."""

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lb.demo.users import Users

from conftest import PYTHON, ROOT, Lb, wait_for, wait_for_requests
from test_deploy import FAST, Deploy

ONE_WORKER = {**FAST, "workers": 1}


class FleetDeploy(Deploy):
    """`lb deploy` with one -s per target."""

    def __init__(self, tmp_path: Path, targets: list[str], *args: str, env: dict | None = None):
        self.state = str(tmp_path / "deploy.state")
        self.args = ["-m", "lb.cli", "deploy", *[a for t in targets for a in ("-s", t)], "--state", self.state, *args]
        self.events = []
        self.env = env

    async def start(self):
        self.proc = await asyncio.create_subprocess_exec(
            PYTHON, *self.args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self.env)
        self._reading = asyncio.create_task(self._read())
        return self


def lbs_on(spawn, tmp_path, count: int, backends: list[dict]) -> list[Lb]:
    return [spawn(Lb, tmp_path, backends, **ONE_WORKER) for _ in range(count)]


def rows(lb: Lb) -> set:
    return {(s["version"], s["state"], s["health"]) for s in lb.ctl("show servers")["servers"]}


def fleet_users(lbs: list[Lb], slots: int) -> Users:
    return Users("127.0.0.1", [lb.port for lb in lbs], slots=slots, life=(10, 30), think_s=0.02)


async def test_a_deploy_across_three_lbs_fails_no_request_and_sends_nobody_back(spawn, detached_backends, tmp_path):
    backends = detached_backends(10)
    lbs = lbs_on(spawn, tmp_path, 3, backends.configs())
    weights = [{s["name"]: s["weight"] for s in lb.ctl("show servers")["servers"]} for lb in lbs]
    async with fleet_users(lbs, 30) as users:
        await wait_for_requests(users, 300)
        before = users.requests
        deploy = await FleetDeploy(tmp_path, [str(lb.socket_path) for lb in lbs], "--to", "v2", "--update",
                                   backends.update_command(), "--batch", "3", "--canary", "1", "--min-ready", "70%",
                                   "--bake", "1s", "--canary-bake", "2s").start()
        code = await deploy.finish()
        during = users.requests - before
        await wait_for_requests(users, users.requests + 300)
    assert code == 0, (deploy.stderr, deploy.of("failed"))
    for lb, weight in zip(lbs, weights):
        assert rows(lb) == {("v2", "ready", "up")}, lb.ctl("show servers")
        # each node was put back at weight 0 until up on all three lbs, then given its weight again
        assert {s["name"]: s["weight"] for s in lb.ctl("show servers")["servers"]} == weight
        assert lb.ctl("show stats")["stats"]["totals"]["requests"] > 100       # every lb served users
    assert users.failures == []
    assert users.backward_flips(["v1", "v2"]) == []
    assert during >= 100, during
    plan = deploy.of("plan")[0]
    assert any("fleet of 3 lbs" in note for note in plan["notes"]), plan
    baked = deploy.of("baked")
    assert len(baked) == 4 and all(b["ok"] for b in baked) and baked[0]["requests"] > 0
    summary = deploy.summary
    assert summary["lbs"] == [str(lb.socket_path) for lb in lbs] and summary["lost"] == {}
    assert all(set(node["on"]) == set(summary["lbs"]) for node in summary["nodes"])


async def test_lbs_that_disagree_on_the_nodes_are_refused_before_any_step(spawn, detached_backends, tmp_path):
    backends = detached_backends(4)
    configs = backends.configs()
    lbs = [spawn(Lb, tmp_path, configs, **ONE_WORKER), spawn(Lb, tmp_path, configs[:3], **ONE_WORKER),
           spawn(Lb, tmp_path, configs, **ONE_WORKER)]
    # lb 3 was told web2 runs v0 (as an lb back from its state file after a rollback may be): a
    # claim its checks do not confirm keeps web2 out there. (A label only from a config file
    # would be adopted from the checks, and the lbs would agree again: test_stale_config.py.)
    assert lbs[2].ctl("set version web2 v0")["ok"]
    targets = [str(lb.socket_path) for lb in lbs]
    deploy = await FleetDeploy(tmp_path, targets, "--to", "v2", "--update", backends.update_command()).start()
    assert await deploy.finish() == 2
    assert f"{targets[1]}: no node web4 ({targets[0]} has it)" in deploy.stderr
    assert f"{targets[2]}: web2 version v0 ({targets[0]}: v1)" in deploy.stderr
    assert deploy.of("step") == [] and deploy.of("plan") == []
    for lb in lbs:                                      # nothing was changed on any lb
        assert {r[1] for r in rows(lb)} == {"ready"}         # (lb 3's web2 is labelled v0 but says v1)
        assert {r[0] for r in rows(lb)} == ({"v1", "v0"} if lb is lbs[2] else {"v1"})


async def test_an_lb_killed_mid_deploy_fails_the_step_and_the_others_roll_back(spawn, detached_backends, tmp_path):
    backends = detached_backends(5)
    lbs = lbs_on(spawn, tmp_path, 3, backends.configs())
    victim = lbs[2]
    targets = [str(lb.socket_path) for lb in lbs]
    async with fleet_users(lbs[:2], 10) as users:          # users of the two lbs that stay
        await wait_for_requests(users, 100)
        deploy = await FleetDeploy(tmp_path, targets, "--to", "v2", "--update", backends.update_command(),
                                   "--canary", "1", "--canary-bake", "30s", "--min-ready", "60%",
                                   "--lb-timeout", "2s").start()
        await deploy.wait_event(lambda e: e["event"] == "bake")
        killed_at = time.monotonic()
        victim.signal(signal.SIGKILL)                        # the whole lb: master (its worker follows)
        victim.proc.wait(5)
        code = await deploy.finish()
        await wait_for_requests(users, users.requests + 100)
    assert code == 1, (deploy.stderr, deploy.events[-5:])
    failure = deploy.summary["failure"]
    assert failure["step"] == "bake" and targets[2] in failure["reason"], failure
    assert list(deploy.summary["lost"]) == [targets[2]]
    canary = deploy.of("plan")[0]["batches"][0]["nodes"][0]
    node = next(n for n in deploy.summary["nodes"] if n["name"] == canary)
    assert node["result"] == "rolled back" and node["on"][targets[2]]["lost"] is True
    assert f"lb {targets[2]} stopped answering" in deploy.stderr
    for lb in lbs[:2]:
        assert rows(lb) == {("v1", "ready", "up")}, lb.ctl("show servers")
    assert users.failures == []
    # until the rollback (which takes v2 away from the canary's users, by design) nobody went back
    assert users.backward_flips(["v1", "v2"], before=killed_at) == []


STAND_IN_SSH = """#!{python}
# A stand-in for ssh in the tests: records its arguments and pid, then runs the "remote"
# command (its last argument) here, through a shell, as sshd would.
import json, os, sys
with open({log!r}, "a") as out:
    out.write(json.dumps({{"pid": os.getpid(), "argv": sys.argv[1:]}}) + "\\n")
os.execvp("sh", ["sh", "-c", sys.argv[-1]])
"""
LB_SHIM = """#!/bin/sh
exec {python} -m lb.cli "$@"
"""


@pytest.fixture
def ssh_path(tmp_path):
    """A bin folder with `ssh` (the stand-in) and `lb` (what the remote command runs); the
    environment that puts it first on PATH; and the stand-in's log."""
    folder = tmp_path / "bin"
    folder.mkdir()
    log = tmp_path / "ssh.log"
    (folder / "ssh").write_text(STAND_IN_SSH.format(python=PYTHON, log=str(log)))
    (folder / "lb").write_text(LB_SHIM.format(python=PYTHON))
    for name in ("ssh", "lb"):
        (folder / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    return folder, env, log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_ssh_targets_run_lb_ctl_stdio_through_the_users_ssh(spawn, detached_backends, tmp_path, ssh_path):
    folder, env, log = ssh_path
    backends = detached_backends(3)
    lbs = lbs_on(spawn, tmp_path, 2, backends.configs())
    remote = [f"ssh://ops@lb{i + 1}.example:2222{lb.socket_path}" for i, lb in enumerate(lbs)]
    # lb ctl: one reply per lb, labelled; an ssh target and a local socket side by side
    done = subprocess.run([PYTHON, "-m", "lb.cli", "ctl", "-s", remote[0], "-s", str(lbs[1].socket_path),
                           "show", "servers"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["lb"] for r in replies] == [remote[0], str(lbs[1].socket_path)]
    assert all(len(r["reply"]["servers"]) == 3 for r in replies)
    assert [c["argv"] for c in calls(log)] == [["-T", "-o", "BatchMode=yes", "-p", "2222", "ops@lb1.example",
                                                f"lb ctl --stdio -s {lbs[0].socket_path}"]]
    # an ssh target whose socket does not answer: labelled, exit 1
    done = subprocess.run([PYTHON, "-m", "lb.cli", "ctl", "-s", "ssh://lb9.example/tmp/no-such-lb.sock",
                           "-s", str(lbs[0].socket_path), "show", "info"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    replies = {r["lb"]: r["reply"] for r in map(json.loads, done.stdout.splitlines())}
    assert "cannot reach lb on admin socket" in replies["ssh://lb9.example/tmp/no-such-lb.sock"]["error"]
    assert replies[str(lbs[0].socket_path)]["ok"]
    # a whole deploy over ssh, with --ssh-command adding an option
    log.unlink()
    deploy = await FleetDeploy(tmp_path, remote, "--to", "v2", "--update", backends.update_command(),
                               "--batch", "2", "--min-ready", "30%", "--bake", "1s", "--canary-bake", "1s",
                               "--min-requests", "0", "--ssh-command", f"{folder}/ssh -o ConnectTimeout=5", env=env).start()
    assert await deploy.finish() == 0, (deploy.stderr, deploy.events[-5:])
    for lb in lbs:
        assert rows(lb) == {("v2", "ready", "up")}
    made = calls(log)
    assert {tuple(c["argv"][:6]) for c in made} == {("-o", "ConnectTimeout=5", "-T", "-o", "BatchMode=yes", "-p")}
    assert {c["argv"][-1] for c in made} == {f"lb ctl --stdio -s {lb.socket_path}" for lb in lbs}
    assert len(made) < 40, len(made)           # relays are kept and reused, not one ssh per command
    assert wait_for(lambda: all(gone(c["pid"]) for c in made), 10, "every relay to end with the deploy")


def test_lb_ctl_stdio_relays_a_reply_a_line_and_says_when_lb_is_unreachable(spawn, detached_backends, tmp_path):
    backends = detached_backends(1)
    lb = spawn(Lb, tmp_path, backends.configs(), **ONE_WORKER)
    done = subprocess.run([PYTHON, "-m", "lb.cli", "ctl", "--stdio", "-s", str(lb.socket_path)], cwd=ROOT,
                          input="show versions\n\nfrobnicate\n", capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["ok"] and not second["ok"] and "unknown command" in second["error"]
    done = subprocess.run([PYTHON, "-m", "lb.cli", "ctl", "--stdio", "-s", str(tmp_path / "none.sock")], cwd=ROOT,
                          input="show info\n", capture_output=True, text=True, timeout=30)
    reply = json.loads(done.stdout)
    assert done.returncode == 0 and reply["unreachable"] and not reply["ok"]
    bad = subprocess.run([PYTHON, "-m", "lb.cli", "ctl", "--stdio", "-s", "ssh://h/x.sock"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2 and "--stdio takes one local -s SOCKET" in bad.stderr
