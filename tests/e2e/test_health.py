"""Health end to end: real lb, real backends, fast check settings."""

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request

import pytest

from conftest import Backend, Lb, get, steady_load, wait_for, wait_for_requests
from test_metrics import scrape, value

FAST = {"health": {"interval": "200ms", "timeout": "500ms", "rise": 2, "fall": 2},
        "passive": {"failures": 3, "eject": "1s"}, "slow_start": "0s"}


def nodes_of(lb, count, path="/"):
    return [json.loads(get(lb.port, path).body)["node"] for _ in range(count)]


def test_a_node_put_back_gets_no_traffic_until_its_checks_pass(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], **FAST)
    assert lb.ctl("maint web2")["ok"]
    web2.stop()
    spawn(Backend, "web2", port=web2.port, warmup_s=2.0)       # /health is 503 for 2 s
    started = time.monotonic()
    assert lb.ctl("ready web2")["ok"]
    assert lb.server("web2")["health"] == "down"
    early = nodes_of(lb, 20)
    waited = lb.ctl("wait web2 up 10")
    assert waited["ok"] and time.monotonic() - started > 1.8
    assert early == ["web1"] * 20
    assert "web2" in nodes_of(lb, 20)
    check = lb.server("web2")["last_check"]
    assert check["ok"] and check["status"] == 200 and check["version"] == "v1"


async def test_a_killed_backend_goes_down_and_no_request_fails(spawn, tmp_path):
    backends = [spawn(Backend, f"web{i}") for i in (1, 2, 3)]
    lb = spawn(Lb, tmp_path, [b.config() for b in backends], **FAST)
    async with steady_load(lb, 6) as load:
        await wait_for_requests(load, 100)
        backends[1].signal(signal.SIGKILL)
        killed = time.monotonic()
        down = await asyncio.to_thread(wait_for, lambda: lb.server("web2")["health"] == "down",
                                       5, "web2 to be down")
        took = time.monotonic() - killed
        await wait_for_requests(load, len(load.records) + 200)
    assert down and took < 2 * 0.2 + 0.5 + 1.0          # fall x interval + timeout + slack
    assert load.failures == []


def test_a_backend_answering_500_is_ejected_and_comes_back_when_fixed(spawn, tmp_path):
    web1, bad = spawn(Backend, "web1"), spawn(Backend, "web2", fail_rate=1.0)
    lb = spawn(Lb, tmp_path, [web1.config(), bad.config()], balance="round_robin", **FAST)
    failures = 0
    while failures < 3:                                   # passive.failures: 3
        assert lb.server("web2")["health"] == "up"        # `show` waits for every worker's report
        failures += get(lb.port, "/").status == 500
    # The third failure ejects it. (The view that says so reaches the workers a round trip after
    # the failure: a client faster than that can still be sent there once, so the test asks lb.)
    server = lb.server("web2")
    assert server["health"] == "ejected" and 0 < server["ejected_for_s"] <= 1.0
    assert [get(lb.port, "/").status for _ in range(10)] == [200] * 10
    bad.stop()
    spawn(Backend, "web2", port=bad.port)                 # the fixed release
    lb.ctl("wait web2 up 10")
    assert lb.server("web2")["health"] == "up"
    assert "web2" in nodes_of(lb, 10)


def test_slow_start_ramps_the_share_of_a_returning_node(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], balance="round_robin",
               **{**FAST, "slow_start": "3s"})
    assert lb.ctl("maint web2")["ok"] and lb.ctl("ready web2")["ok"]
    assert lb.ctl("wait web2 up 5")["ok"]
    first = nodes_of(lb, 40)
    first_weight = lb.server("web2")["effective_weight"]
    wait_for(lambda: lb.server("web2")["effective_weight"] == 100, 5, "the ramp to finish")
    last = nodes_of(lb, 40)
    assert first_weight < 60
    assert first.count("web2") < 15 and 17 <= last.count("web2") <= 23


def test_a_node_whose_backend_reports_another_version_stays_out(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2", version="v1")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], **FAST)
    assert lb.ctl("set version web2 v2")["ok"]            # labelled v2, still running v1
    wait_for(lambda: lb.server("web2")["health"] == "version_mismatch", 3, "the mismatch")
    assert set(nodes_of(lb, 20)) == {"web1"}
    reply = lb.ctl("wait web2 up 1")
    assert not reply["ok"] and "version_mismatch" in reply["error"]
    assert lb.ctl("set version web2 v1")["ok"]
    assert lb.ctl("wait web2 up 5")["ok"]


def post(backend, path: str) -> dict:
    """A request straight to the backend (not through lb)."""
    request = urllib.request.Request(f"http://{backend.address}{path}", method="POST")
    return json.loads(urllib.request.urlopen(request, timeout=5).read())


def test_a_node_that_asks_to_be_drained_is_drained_and_comes_back_on_200(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], balance="round_robin", **FAST)
    assert post(web2, "/drain")["asking_drain"] is True                  # its /health answers 404 now
    through_lb = urllib.request.Request(f"{lb.url}/drain", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:                # not for lb's users
        urllib.request.urlopen(through_lb, timeout=5)
    assert refused.value.code == 403
    wait_for(lambda: lb.server("web2")["health"] == "drain_requested", 3, "web2's drain request")
    server = lb.server("web2")
    assert server["state"] == "ready"                                    # the operator's axis is untouched
    assert server["last_check"]["status"] == 404 and server["last_check"]["drain"] is True
    assert set(nodes_of(lb, 20)) == {"web1"}
    assert value(scrape(lb), "lb_backend_health", backend="web2", health="drain_requested") == 1
    reply = lb.ctl("wait web2 up 1")                                      # as a deploy sees it: not ready
    assert not reply["ok"] and "drain_requested" in reply["error"]
    assert post(web2, "/undrain")["asking_drain"] is False
    assert lb.ctl("wait web2 up 5")["ok"]
    assert "web2" in nodes_of(lb, 20)


def test_the_last_node_of_a_version_asking_to_be_drained_is_kept(spawn, tmp_path):
    """v2's only node asks to drain: its users would be sent back to v1; lb keeps it, and says so."""
    web1, web2 = spawn(Backend, "web1", "v1"), spawn(Backend, "web2", "v2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], **FAST)
    assert post(web2, "/drain")["asking_drain"] is True
    refusal = "but it is the last node of v2 taking traffic: kept"
    wait_for(lambda: refusal in lb.stderr_path.read_text(), 5, "the refusal")
    assert lb.server("web2")["health"] == "up"
    assert get(lb.port, "/", headers={"Cookie": "lb_version=v2"}).status == 200
    assert json.loads(get(lb.port, "/", headers={"Cookie": "lb_version=v2"}).body)["node"] == "web2"
    assert lb.stderr_path.read_text().count(refusal) == 1                # said once, not at every check


async def test_a_backend_stopped_with_grace_is_drained_before_it_exits(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2", args=("--grace", "1.5"))
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], **FAST)
    async with steady_load(lb, 6) as load:
        await wait_for_requests(load, 100)
        web2.signal(signal.SIGTERM)
        await asyncio.to_thread(wait_for, lambda: lb.server("web2")["health"] == "drain_requested",
                                3, "web2 to ask to be drained")
        assert web2.proc.poll() is None                                   # drained before it exits
        await asyncio.to_thread(web2.proc.wait, 10)
        await wait_for_requests(load, len(load.records) + 200)
    assert web2.proc.returncode == 0
    assert load.failures == []
    stats = lb.ctl("show stats web2")["stats"]
    assert stats["connect_errors"] == 0 and stats["5xx"] == 0          # nothing was sent to a closed port


def test_passive_ejection_never_takes_out_more_than_max_ejected(spawn, tmp_path):
    bad = [spawn(Backend, f"web{i}", fail_rate=1.0) for i in (1, 2, 3)]
    lb = spawn(Lb, tmp_path, [b.config() for b in bad], balance="round_robin",
               **{**FAST, "passive": {"failures": 3, "eject": "30s", "max_ejected": "50%"}})
    statuses = [get(lb.port, "/").status for _ in range(60)]
    assert statuses == [500] * 60
    healths = [s["health"] for s in lb.ctl("show servers")["servers"]]
    assert healths.count("ejected") == 1 and healths.count("up") == 2     # a second would be 67%


def test_a_backend_failing_half_its_requests_is_ejected_by_its_failure_rate(spawn, tmp_path):
    """`lb backend --fail-rate 0.5` fails every other request: never 3 in a row, so only the
    failure rate over a window (passive.failure_rate) can eject it. One worker: every
    outcome in order, so the consecutive rule sees the successes between the failures."""
    good = [spawn(Backend, f"web{i}") for i in (1, 2)]
    bad = spawn(Backend, "web3", fail_rate=0.5)
    lb = spawn(Lb, tmp_path, [b.config() for b in (*good, bad)], balance="round_robin", workers=1,
               **{**FAST, "passive": {"failures": 3, "eject": "30s", "failure_rate": "50%", "window": "1s",
                                      "min_requests": 10}})
    statuses = []
    while lb.server("web3")["health"] != "ejected":
        assert len(statuses) < 3000, "web3 was never ejected"
        statuses.append(get(lb.port, "/").status)
    assert 500 in statuses
    assert [s["health"] for s in lb.ctl("show servers")["servers"]] == ["up", "up", "ejected"]


@pytest.mark.parametrize("panic", [True, False])
def test_panic_routes_to_failing_nodes_when_none_is_up(spawn, tmp_path, panic):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()],
               **{**FAST, "health": {**FAST["health"], "panic": panic}})
    for backend in (web1, web2):                  # /health answers 503 while / serves
        assert post(backend, "/sick")["sick"] is True
    wait_for(lambda: {s["health"] for s in lb.ctl("show servers")["servers"]} == {"down"}, 5, "both down")
    if not panic:
        assert get(lb.port, "/").status == 503 and lb.ctl("show servers")["panic"] is False
        return
    assert set(nodes_of(lb, 10)) == {"web1", "web2"}                      # not 503
    assert lb.ctl("show servers")["panic"] is True and lb.ctl("show info")["panic"] is True
    samples = scrape(lb)
    assert value(samples, "lb_panic") == 1 and value(samples, "lb_panics_total") == 1
    assert post(web2, "/well")["sick"] is False
    assert lb.ctl("wait web2 up 5")["ok"]
    wait_for(lambda: lb.ctl("show servers")["panic"] is False, 2, "the panic to end")
    assert set(nodes_of(lb, 10)) == {"web2"}
    assert value(scrape(lb), "lb_panic") == 0
    log = lb.stderr_path.read_text()
    assert log.count("PANIC:") == 1 and log.count("panic over") == 1
