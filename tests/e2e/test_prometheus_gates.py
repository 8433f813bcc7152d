"""Deploy gates judged on a real Prometheus server (issue 30): Debian's prometheus package,
started on a free port, scraping lb's /metrics every second. Never a mock: a gate on the
new version's share of 5xx fails the deploy of a bad release and passes a good one, and a
gate whose query finds no data fails once --gate-tries answers in a row said nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from test_deploy import FAST, assert_all, run_deploy, sessions

from conftest import Backend, Lb, free_port, steady_load, wait_for_requests
import prometheus as prometheus_module
from prometheus import Prometheus

FIVE_XX_SHARE = ('sum(rate(lb_requests_total{{version="{version}",code_class="5xx"}}[5s]))'
                 ' / sum(rate(lb_requests_total{{version="{version}"}}[5s]))')
# lb's own judge of a bake's error rate off, and passive ejection off: only the gate decides
GATE_ONLY = {**FAST, "passive": {"failures": 0, "failure_rate": "0%"}}


@pytest.fixture
def prometheus_for(tmp_path):
    """Start a Prometheus scraping an lb's /metrics; stopped at teardown."""
    started = []

    def start(lb: Lb) -> Prometheus:
        server = Prometheus(tmp_path / f"prometheus-{len(started)}", [lb.config["metrics"]["listen"]], free_port())
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_a_prometheus_that_never_becomes_ready_is_stopped_before_the_error(tmp_path, monkeypatch):
    """The fixture records a server only once it is up: one that never is must not be left
    running. A stand-in binary that never answers /-/ready, and a short start timeout."""
    pid_file = tmp_path / "pid"
    stand_in = tmp_path / "never-ready"
    stand_in.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    stand_in.chmod(0o755)
    monkeypatch.setattr(prometheus_module, "ensure_installed", lambda: str(stand_in))
    monkeypatch.setattr(prometheus_module, "START_TIMEOUT_S", 0.5)
    with pytest.raises(AssertionError, match="did not become ready"):
        Prometheus(tmp_path / "prometheus", ["127.0.0.1:1"], free_port())
    pid = int(pid_file.read_text())
    try:
        assert not Path(f"/proc/{pid}").exists(), f"the stand-in prometheus (pid {pid}) is still running"
    finally:
        try:
            os.kill(pid, signal.SIGKILL)         # without the fix: do not leak it past the test
        except ProcessLookupError:
            pass


def test_prometheus_scrapes_lb_and_a_bad_versions_5xx_share_shows(spawn, tmp_path, prometheus_for):
    """The query a gate runs: the share of 5xx of each version, from lb's own counters as
    Prometheus stored them. A version whose node fails half its requests shows ~0.5; a good
    one 0, not "no data" (lb exports every class of a version it served, zeros included,
    so a gate on a good version is conclusive)."""
    good = spawn(Backend, "web1", "v1")
    bad = spawn(Backend, "web2", "v2", fail_rate=0.5)
    lb = spawn(Lb, tmp_path, [good.config(), bad.config()], health={"interval": "200ms", "rise": 1})
    prometheus = prometheus_for(lb)

    async def load():
        async with steady_load(lb, workers=2) as users:
            await wait_for_requests(users, 50)
            for version in ("v1", "v2"):
                await asyncio.to_thread(prometheus.wait_for_series, FIVE_XX_SHARE.format(version=version), 30)
            return {version: float((await asyncio.to_thread(prometheus.query, FIVE_XX_SHARE.format(
                version=version)))[0]["value"][1]) for version in ("v1", "v2")}

    shares = asyncio.run(load())
    assert shares["v1"] == 0.0
    assert 0.3 < shares["v2"] < 0.7, shares


@pytest.mark.parametrize("fail_rate", [0.5, 0.0])
async def test_a_gate_on_the_new_versions_5xx_share_fails_a_bad_release_and_passes_a_good_one(
        spawn, detached_backends, tmp_path, prometheus_for, fail_rate):
    nodes = detached_backends(3)
    lb = spawn(Lb, tmp_path, nodes.configs(), **GATE_ONLY)
    prometheus = prometheus_for(lb)
    gate = "errors: " + FIVE_XX_SHARE.format(version="{version}") + " < 0.1"
    update = nodes.update_command(f"--fail-rate {fail_rate}" if fail_rate else "")
    async with sessions(lb, 20) as users:
        await wait_for_requests(users, 100)
        code, deploy = await run_deploy(
            lb, "--to", "v2", "--update", update, "--rollback", nodes.update_command(), "--min-ready", "60%",
            "--canary-bake", "4s", "--bake", "2s", "--min-requests", "20", "--max-error-rate", "1",
            "--max-p99-ratio", "1000",      # the gate is on trial, not the built-in latency bar (a busy box)
            "--prometheus", prometheus.url, "--gate", gate, "--gate-tries", "8", "--check-interval", "1s")
    gates = [e for e in deploy.of("gate") if e["kind"] == "gate"]
    if fail_rate:
        assert code == 1, deploy.stderr
        failure = deploy.summary["failure"]
        assert (failure["node"], failure["step"]) == ("web1", "gate"), failure
        assert failure["gate"]["outcome"] == "fail" and 0.3 < failure["gate"]["value"] < 0.7, failure
        assert failure["query"] == FIVE_XX_SHARE.format(version="v2")
        assert_all(lb, "v1")
    else:
        assert code == 0, deploy.stderr
        assert_all(lb, "v2")
        # every batch's gate passed on a value Prometheus computed: 0, not "no data"
        assert {e["outcome"] for e in gates} <= {"pass", "inconclusive"}
        assert [e["value"] for e in gates if e["outcome"] == "pass"].count(0.0) >= 3


async def test_a_gate_whose_query_finds_no_data_fails_after_its_tries(spawn, detached_backends, tmp_path,
                                                                     prometheus_for):
    """No data is no verdict: asked again at the bake's end, then failed (--gate-tries 2)."""
    nodes = detached_backends(3)
    lb = spawn(Lb, tmp_path, nodes.configs(), **FAST)
    prometheus = prometheus_for(lb)
    prometheus.wait_for_series("lb_backend_weight")               # it scrapes lb
    code, deploy = await run_deploy(
        lb, "--to", "v2", "--update", nodes.update_command(), "--rollback", nodes.update_command(),
        "--min-ready", "60%", "--canary-bake", "1s", "--min-requests", "0", "--prometheus", prometheus.url,
        "--gate", 'errors: sum(rate(app_5xx{version="{version}",node=~"{nodes}"}[1m])) < 0.05',
        "--gate-tries", "2", "--check-interval", "10s")
    assert code == 1, deploy.stderr
    failure = deploy.summary["failure"]
    assert (failure["node"], failure["step"]) == ("web1", "gate")
    assert failure["reason"] == ("--gate errors: inconclusive 2 times in a row (--gate-tries 2): no data "
                                 "(the query matched no series)"), failure
    assert failure["query"] == 'sum(rate(app_5xx{version="v2",node=~"web1"}[1m]))'
    assert failure["gate"]["kind"] == "gate" and failure["gate"]["outcome"] == "inconclusive"
    # never asked at the bake's start (the new version has no samples yet); twice at its end
    assert [e["when"] for e in deploy.of("gate") if e["kind"] == "gate"] == ["end", "end"]
    assert_all(lb, "v1")
