"""A config file a deploy left behind (issue 26): a fresh lb on it serves, `lb check --live`
names the stale versions, `lb deploy` prints the lines to change or writes them.

The sequence that was an outage: an lb and its backends on v1, `lb deploy --to v2`, lb
stopped, its state file gone (a new box, a wiped StateDirectory, a second lb), a fresh lb
on the same config: it answered 200 once, then 503 for every request (every node
version_mismatch, every backend healthy)."""

import subprocess

import yaml

from lb.demo.users import Users

from conftest import PYTHON, ROOT, Backend, Lb, wait_for, wait_for_requests
from test_deploy import FAST, run_deploy, servers

COMMENTED = """# lb in front of the web tier -- edited by hand, keep the comments
listen: {listen}        # the public port
admin: {{socket: {socket}}}
metrics: {{listen: {metrics}}}
access_log: {access_log}
state_file: {state_file}
backends:
  # the first two, flow style
  - {{name: web1, address: '{web1}', version: v1}}   # rack A
  - {{name: web2, address: "{web2}", version: 'v1'}}
  - name: web3            # rack B
    address: {web3}
    version: "v1"         # quoted on purpose
health: {{interval: 200ms, timeout: 500ms, rise: 1, fall: 2}}
slow_start: 0s
# end of file
"""


def lb_check(config_path, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "lb.cli", "check", "-c", str(config_path), *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


async def test_a_fresh_lb_on_the_config_a_deploy_left_behind_fails_no_request(spawn, detached_backends, tmp_path):
    nodes = detached_backends(3)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    code, deploy = await run_deploy(lb, "--to", "v2", "--update", nodes.update_command(), "--min-ready", "60%",
                                    "--bake", "500ms", "--canary-bake", "500ms", "--min-requests", "0")
    assert code == 0, deploy.stderr
    # the deploy says which config lines are now stale
    for name in nodes.names:
        assert f"    {name}: version: v1  ->  version: v2" in deploy.stderr
    assert deploy.summary["config"]["to_change"][0] == {"name": "web1", "was": "v1", "version": "v2"}
    assert {b["version"] for b in yaml.safe_load(lb.config_path.read_text())["backends"]} == {"v1"}
    assert lb.stop() == 0
    (tmp_path / lb.config["state_file"]).unlink()          # a new box: no state file
    lb.restart()                                           # a fresh lb on the same (stale) config
    async with Users("127.0.0.1", lb.port, slots=6, life=(10, 30), think_s=0.01) as users:
        await wait_for_requests(users, 100)
        wait_for(lambda: users.failures or all(s["version"] == "v2" and s["last_check"]
                                               for s in servers(lb).values()), 10, "the first checks")
        await wait_for_requests(users, len(users.records) + 300)    # over many more checks
    assert users.failures == []
    assert {(s["version"], s["health"]) for s in servers(lb).values()} == {("v2", "up")}
    assert users.backward_flips(["v1", "v2"]) == []
    log = lb.stderr_path.read_text()
    for name in nodes.names:
        assert (f"VERSION ADOPTED: {name} is labelled v1 (configured v1) but its health check reports v2; "
                f"no version move is in progress, so lb relabels it v2") in log
    assert f"set backends[0] (web1) to `version: v2`, or run `lb ctl -s {lb.socket_path} set version web1 v2`" in log
    # `lb check --live` names each stale line; the plain check warns and still passes
    live = lb_check(lb.config_path, "--live")
    assert live.returncode == 1, live.stderr
    assert ("lb check: web1: the config says version v1; lb runs it as v2: set `version: v2`"
            in live.stderr.splitlines())
    assert lb_check(lb.config_path).returncode == 0 and "warning: web3: the config says" in lb_check(
        lb.config_path).stderr


async def test_check_live_agrees_once_the_config_is_right_and_needs_a_running_lb(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1", version="v2"), spawn(Backend, "web2", version="v1")
    lb = spawn(Lb, tmp_path, [web1.config(version="v1"), web2.config()], **FAST)
    wait_for(lambda: servers(lb)["web1"]["version"] == "v2", 5, "web1 adopted as v2")
    live = lb_check(lb.config_path, "--live")
    assert live.returncode == 1 and live.stderr.count("lb check: ") == 1 and "web1:" in live.stderr
    lb.write_config(backends=[web1.config(), web2.config()])           # the file put right
    live = lb_check(lb.config_path, "--live")
    assert live.returncode == 0 and "the running lb agrees with its versions" in live.stdout, live.stderr
    assert lb.stop() == 0
    gone = lb_check(lb.config_path, "--live")
    assert gone.returncode == 2 and "--live: no answer from lb on" in gone.stderr
    assert lb_check(lb.config_path).returncode == 0                     # without --live: a validation


async def test_deploy_write_config_changes_only_the_versions_and_keeps_the_comments(spawn, detached_backends, tmp_path):
    nodes = detached_backends(3)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    commented = tmp_path / "lb.yaml"
    text = COMMENTED.format(listen=lb.config["listen"], socket=lb.socket_path, metrics=lb.config["metrics"]["listen"],
                            access_log=lb.access_log, state_file=lb.config["state_file"],
                            **{n: f"127.0.0.1:{nodes.ports[n]}" for n in nodes.names})
    commented.write_text(text)
    commented.chmod(0o640)
    code, deploy = await run_deploy(lb, "--to", "v2", "--update", nodes.update_command(), "--min-ready", "60%",
                                    "--bake", "500ms", "--canary-bake", "500ms", "--min-requests", "0", "--write-config", str(commented))
    assert code == 0, deploy.stderr
    after = commented.read_text()
    assert after == (text.replace("version: v1}", "version: v2}").replace("version: 'v1'", "version: 'v2'")
                     .replace('version: "v1"', 'version: "v2"'))
    assert commented.stat().st_mode & 0o777 == 0o640
    assert f"config {commented}: 3 version(s) changed:" in deploy.stderr
    assert "    line 13: version: \"v2\"         # quoted on purpose" in deploy.stderr
    assert lb_check(commented, "--live").returncode == 0
    # a file lb cannot edit is refused before anything is done
    code, refused = await run_deploy(lb, "--to", "v3", "--update", "true", "--write-config",
                                     str(tmp_path / "nope.yaml"))
    assert code == 2 and "--write-config:" in refused.stderr
    assert {s["version"] for s in servers(lb).values()} == {"v2"}


async def test_an_update_that_changed_nothing_fails_the_deploy_though_the_only_node_is_adopted(spawn, detached_backends,
                                                                                                 tmp_path):
    """One node, --min-ready 0%: the update does nothing, the node labelled v2 reports v1. The
    version check may not leave the pool empty, so lb adopts v1 and serves; the deploy sees the
    node up on v1, not v2, and fails and rolls back."""
    nodes = detached_backends(1)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    code, deploy = await run_deploy(lb, "--to", "v2", "--update", "true", "--min-ready", "0%")
    assert code == 1, deploy.stderr
    failure = deploy.summary["failure"]
    assert (failure["node"], failure["step"]) == ("web1", "wait up")
    assert "web1 is up but runs v1, not v2" in failure["reason"]
    assert {(s["version"], s["health"]) for s in servers(lb).values()} == {("v1", "up")}
    assert "no node would take traffic otherwise" in lb.stderr_path.read_text()
