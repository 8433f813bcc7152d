"""`lb deploy` end to end: real lb, real backend processes the update command really
restarts, cookie-keeping client sessions, the deploy run as the CLI a user runs."""

import asyncio
import json
import signal
import time
from collections import defaultdict

import pytest

from lb.demo.backend import read_pidfile
from lb.demo.users import Users
from lb.deploy.plan import STEPS

from conftest import PYTHON, ROOT, Lb, client_context, wait_for_requests, write_cert

FAST = {"health": {"interval": "200ms", "timeout": "500ms", "rise": 1, "fall": 2}, "slow_start": "0s"}
DEPLOY_TIMEOUT_S = 120


def sessions(lb, users: int, tls=None) -> Users:
    """Users who keep their cookies; each leaves after a few requests and a new one comes.
    A new user is what a canary gets: pinned users stay on their version. `tls`: HTTPS."""
    return Users("127.0.0.1", lb.port, slots=users, life=(10, 30), think_s=0.02, ssl=tls)


class Deploy:
    """`lb deploy` as a child process; its JSON events are collected as they come."""

    def __init__(self, lb: Lb, *args: str, state=None):
        self.lb = lb
        self.state = state or str(lb.tmp_path / "deploy.state")
        self.args = ["-m", "lb.cli", "deploy", "-s", str(lb.socket_path), "--state", self.state, *args]
        self.events: list[dict] = []

    async def start(self):
        self.proc = await asyncio.create_subprocess_exec(
            PYTHON, *self.args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._reading = asyncio.create_task(self._read())
        return self

    async def _read(self):
        async for line in self.proc.stdout:
            self.events.append(json.loads(line))

    async def wait_event(self, match, timeout_s: float = 60):
        deadline = time.monotonic() + timeout_s
        while not any(match(e) for e in self.events):
            assert self.proc.returncode is None, f"deploy ended first: {self.events[-3:]}"
            assert time.monotonic() < deadline, "no such event"
            await asyncio.sleep(0.02)

    async def finish(self) -> int:
        try:
            await asyncio.wait_for(self.proc.wait(), DEPLOY_TIMEOUT_S)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
        await self._reading
        self.stderr = (await self.proc.stderr.read()).decode()
        return self.proc.returncode

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    @property
    def summary(self) -> dict:
        return self.of("summary")[-1]


async def run_deploy(lb, *args, **kwargs) -> tuple[int, Deploy]:
    deploy = await Deploy(lb, *args, **kwargs).start()
    return await deploy.finish(), deploy


def servers(lb) -> dict:
    return {s["name"]: s for s in lb.ctl("show servers")["servers"]}


def assert_all(lb, version: str):
    rows = servers(lb)
    assert {(s["version"], s["state"], s["health"]) for s in rows.values()} == {(version, "ready", "up")}, rows


async def test_a_full_deploy_under_load_fails_no_request_and_sends_nobody_back(spawn, detached_backends, tmp_path):
    nodes = detached_backends(10)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    async with sessions(lb, 30) as users:
        await wait_for_requests(users, 300)                 # steady load before the deploy
        before = users.requests
        code, deploy = await run_deploy(lb, "--to", "v2", "--update", nodes.update_command(), "--batch", "3",
                                        "--canary", "1", "--min-ready", "70%", "--bake", "1s",
                                        "--canary-bake", "2s")
        during = users.requests - before
        await wait_for_requests(users, users.requests + 300)   # and after it, on v2
    assert code == 0, (deploy.stderr, deploy.of("failed"))
    plan = deploy.of("plan")[0]["batches"]
    assert [len(b["nodes"]) for b in plan] == [1, 3, 3, 3] and plan[0]["canary"]
    assert_all(lb, "v2")
    assert users.failures == []
    assert users.backward_flips(["v1", "v2"]) == []
    assert during >= 100, during              # the deploy ran under load
    baked = deploy.of("baked")
    assert len(baked) == 4 and all(b["ok"] for b in baked)
    assert baked[0]["requests"] > 0, "the canary got no traffic: the bake judged nothing"
    # the deploy's own record: every step of every node, in order
    steps = defaultdict(list)
    for event in deploy.of("step"):
        if event["status"] == "ok":
            steps[event["node"]].append(event["step"])
    assert all(seq == ["drain", "wait drained", "update", "set version", "ready", "wait up"]
               for seq in steps.values()) and len(steps) == 10
    assert deploy.summary["result"] == "done" and "deploy to v2: done" in deploy.stderr


async def test_a_deploy_over_a_tls_listener_fails_no_request_and_sends_nobody_back(spawn, detached_backends, tmp_path):
    """Drain, pinning and the deploy work unchanged when the clients come over HTTPS."""
    import trustme
    ca = trustme.CA()
    nodes = detached_backends(4)
    lb = spawn(Lb, tmp_path, nodes.configs(), tls={"certs": [write_cert(ca, tmp_path, "lb", "127.0.0.1")]}, **FAST)
    async with sessions(lb, 12, tls=client_context(ca)) as users:
        await wait_for_requests(users, 100)
        code, deploy = await run_deploy(lb, "--to", "v2", "--update", nodes.update_command(), "--batch", "2",
                                        "--canary", "1", "--min-ready", "50%", "--bake", "1s")
        await wait_for_requests(users, users.requests + 100)
    assert code == 0, (deploy.stderr, deploy.of("failed"))
    assert_all(lb, "v2")
    assert users.failures == []
    assert users.backward_flips(["v1", "v2"]) == []
    assert {r.version for r in users.records[-50:]} == {"v2"}


async def test_a_bad_release_fails_the_canary_and_is_rolled_back(spawn, detached_backends, tmp_path):
    nodes = detached_backends(4)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    async with sessions(lb, 20) as users:
        await wait_for_requests(users, 100)
        code, deploy = await run_deploy(lb, "--to", "v2", "--update", nodes.update_command("--fail-rate 0.5"),
                                        "--rollback", nodes.update_command(), "--min-ready", "50%",
                                        "--canary-bake", "3s")
    assert code == 1, deploy.stderr
    assert_all(lb, "v1")
    failure = deploy.summary["failure"]
    assert failure["node"] == "web1" and failure["step"] == "bake"
    assert failure["reason"].startswith("error rate ") and "against 0.0% on v1" in failure["reason"]
    assert 0.3 < failure["numbers"]["error_rate"] < 0.7
    rows = {row["name"]: row for row in deploy.summary["nodes"]}
    assert rows["web1"]["result"] == "rolled back" and rows["web2"]["result"] == "not started"
    assert "failed at web1, step bake: error rate" in deploy.stderr
    # only the canary's users met the bad code; everyone else never saw an error
    assert users.failures and all(what == "status 500" for _, what in users.failures)


@pytest.mark.parametrize("update, extra, step, reason", [
    ("echo broken on {name}; exit 3", [], "update", "exited with status 3"),
    ("sleep 30", ["--update-timeout", "1s"], "update", "timed out after 1s (--update-timeout); killed"),
    (None, ["--health-timeout", "2s"], "wait up", "lb refused 'wait web1 up 2'"),
])
async def test_a_failing_node_stops_the_deploy_and_is_restored(spawn, detached_backends, tmp_path, update, extra, step, reason):
    nodes = detached_backends(3)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    update = update or nodes.update_command("--warmup 600")      # never healthy
    started = time.monotonic()
    code, deploy = await run_deploy(lb, "--to", "v2", "--update", update, "--rollback", nodes.update_command(),
                                    "--min-ready", "60%", *extra)
    assert code == 1, deploy.stderr
    assert time.monotonic() - started < 30
    failure = deploy.summary["failure"]
    assert (failure["node"], failure["step"]) == ("web1", step)
    assert failure["reason"].startswith(reason), failure["reason"]
    if "echo broken" in update:
        assert failure["output"] == ["broken on web1"]
        assert "broken on web1" in (tmp_path / "deploy.log").read_text()
    assert_all(lb, "v1")
    assert {row["result"] for row in deploy.summary["nodes"][1:]} == {"not started"}


async def test_a_rollback_that_fails_too_exits_3_and_says_where_each_node_is(spawn, detached_backends, tmp_path):
    nodes = detached_backends(3)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    code, deploy = await run_deploy(lb, "--to", "v2", "--update", "exit 1", "--rollback", "exit 2",
                                    "--min-ready", "60%")
    assert code == 3, deploy.stderr
    web1 = deploy.summary["nodes"][0]
    assert web1["state"] == "drained" and web1["result"].startswith("rollback: exited with status 2")
    assert "--resume" in deploy.summary["resume"]
    assert servers(lb)["web2"]["state"] == "ready"
    # the state file holds the deploy as stuck: a new deploy is refused until it is resolved
    code, again = await run_deploy(lb, "--to", "v2", "--update", "true")
    assert code == 2 and "unfinished deploy to v2 (stuck)" in again.stderr


async def test_interrupt_mid_batch_then_resume_finishes(spawn, detached_backends, tmp_path):
    nodes = detached_backends(4)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    args = ["--to", "v2", "--update", "sleep 1; " + nodes.update_command(), "--batch", "2",
            "--min-ready", "50%", "--bake", "500ms", "--canary-bake", "500ms", "--min-requests", "0"]   # no traffic
    deploy = await Deploy(lb, *args).start()
    await deploy.wait_event(lambda e: e["event"] == "step" and e["node"] == "web2" and e["step"] == "update")
    deploy.proc.send_signal(signal.SIGINT)
    assert await deploy.finish() == 130
    assert deploy.of("interrupted") and "--resume" in deploy.summary["resume"]
    rows = servers(lb)
    # the update in progress finished; nothing after it ran
    assert rows["web2"]["state"] == "drained" and rows["web2"]["version"] == "v1"
    assert read_pidfile(nodes.pidfile("web2")) and rows["web4"]["version"] == "v1"
    code, resumed = await run_deploy(lb, "--resume")
    assert code == 0, resumed.stderr
    assert_all(lb, "v2")
    # Each node of the batch resumes at the step after the last one it finished before the
    # interrupt: web2 after its update; web3, running in parallel, after whichever step it
    # had reached when SIGINT came (that is timing, so it is read from the events).
    forward = [step.name for step in STEPS["forward"]]
    for name in ("web2", "web3"):
        done = [e["step"] for e in deploy.of("step") if e["node"] == name and e["status"] == "ok"]
        resumed_first = next(e["step"] for e in resumed.of("step")
                             if e["node"] == name and e["status"] == "start")
        assert resumed_first == forward[len(done)], (name, done, resumed_first)
    assert [e["step"] for e in deploy.of("step") if e["node"] == "web2" and e["status"] == "ok"] \
        == forward[:forward.index("update") + 1]


async def test_min_ready_90_percent_with_batch_3_goes_one_at_a_time(spawn, detached_backends, tmp_path):
    nodes = detached_backends(10)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    code, deploy = await run_deploy(lb, "--to", "v2", "--update", "true", "--batch", "3",
                                    "--min-ready", "90%", "--dry-run")
    assert code == 0
    assert [b["nodes"] for b in deploy.of("plan")[0]["batches"]] == [[n] for n in nodes.names]
    assert {s["state"] for s in servers(lb).values()} == {"ready"}        # a dry run changes nothing
    code, deploy = await run_deploy(lb, "--to", "v2", "--update", "true", "--min-ready", "95%", "--dry-run")
    assert code == 2 and "would leave 90% of the weight in service, under --min-ready 95%; " \
        "--min-ready 90% would let it go" in deploy.stderr


@pytest.mark.parametrize("args, message", [
    (["--update", "true"], "--to required"),
    (["--to", "v2", "--update", "x {nmae}"], "--update: unknown placeholder {nmae}"),
    (["--to", "v2", "--update", "true", "--bake", "soon"], "--bake: expected a duration"),
    (["--resume"], "--resume: no deploy state in"),
])
async def test_bad_arguments_exit_2(spawn, detached_backends, tmp_path, args, message):
    nodes = detached_backends(1)
    lb = spawn(Lb, tmp_path, nodes.configs())
    code, deploy = await run_deploy(lb, *args)
    assert code == 2 and message in deploy.stderr, deploy.stderr


async def test_an_unreachable_lb_exits_2(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "lb.cli", "deploy", "-s", str(tmp_path / "nobody.sock"), "--to", "v2", "--update", "true",
        "--state", str(tmp_path / "d.state"), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"cannot reach lb on admin socket" in err


async def test_a_restart_of_lb_mid_deploy_costs_retries_not_the_deploy(spawn, detached_backends, tmp_path):
    nodes = detached_backends(3)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    deploy = await Deploy(lb, "--to", "v2", "--update", "sleep 1; " + nodes.update_command(),
                          "--min-ready", "60%", "--bake", "500ms", "--canary-bake", "500ms",
                          "--min-requests", "0").start()         # no traffic: nothing to judge
    await deploy.wait_event(lambda e: e["event"] == "step" and e["node"] == "web1" and e["step"] == "update")
    assert await asyncio.to_thread(lb.stop) == 0
    await deploy.wait_event(lambda e: e["event"] == "step" and e["step"] == "set version")
    await asyncio.sleep(1.0)                     # `set version` meets no lb for a while
    await asyncio.to_thread(lb._start)           # the state file kept web1 drained
    assert await deploy.finish() == 0, deploy.stderr
    set_version = [e for e in deploy.of("step") if e["node"] == "web1" and e["step"] == "set version"]
    assert [e["status"] for e in set_version] == ["start", "ok"] and set_version[1]["seconds"] >= 1.0
    assert_all(lb, "v2")
