"""Metrics and `show stats`: exact counts after scripted runs, scraped with prometheus-client's parser."""

import statistics
import time
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lb.core import stats

from conftest import Backend, Lb, RawClient, free_port, get, wait_for


def scrape(lb) -> dict:
    """{(sample name, frozenset(labels)): value} from lb's /metrics."""
    url = f"http://{lb.config['metrics']['listen']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def test_scripted_run_gives_exact_counts(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])
    for path, times in (("/", 10), ("/status/404", 3), ("/status/503", 2)):
        for _ in range(times):
            get(lb.port, path)
    with RawClient(lb.port) as client:                      # one lb-made 400
        client.send(b"GET / HTTP/1.1\r\nX-A : 1\r\n\r\n")
        assert client.response().status == 400
    samples = scrape(lb)
    assert value(samples, "lb_requests_total", backend="web1", version="v1", code_class="2xx") == 10
    assert value(samples, "lb_requests_total", backend="web1", version="v1", code_class="4xx") == 3
    assert value(samples, "lb_requests_total", backend="web1", version="v1", code_class="5xx") == 2
    assert value(samples, "lb_request_duration_seconds_count", backend="web1") == 15
    assert value(samples, "lb_request_duration_seconds_bucket", backend="web1", le="+Inf") == 15
    assert value(samples, "lb_failed_requests_total", reason="400") == 1
    assert value(samples, "lb_backend_state", backend="web1", state="ready") == 1
    assert value(samples, "lb_backend_state", backend="web1", state="drained") == 0
    assert value(samples, "lb_backend_health", backend="web1", health="up") == 1
    assert value(samples, "lb_inflight_requests", backend="web1") == 0
    assert value(samples, "lb_version_capacity", version="v1") == 100
    assert value(samples, "lb_pin_assignments_total", version="v1") == 15   # no client kept a cookie
    clients = [RawClient(lb.port) for _ in range(3)]       # open, nothing sent
    try:
        wait_for(lambda: value(scrape(lb), "lb_client_connections") == 3, 5, "3 client connections")
    finally:
        for client in clients:
            client.close()
    wait_for(lambda: value(scrape(lb), "lb_client_connections") == 0, 5, "the connections to close")
    assert lb.ctl("drain web1")["ok"]
    samples = scrape(lb)
    assert value(samples, "lb_drains_total") == 1
    assert value(samples, "lb_drain_duration_seconds_count") == 1     # nothing in flight: at once
    assert value(samples, "lb_drain_duration_seconds_bucket", le="0.1") == 1
    assert value(samples, "lb_backend_state", backend="web1", state="drained") == 1
    stats = lb.ctl("show stats web1")["stats"]
    assert (stats["requests"], stats["2xx"], stats["4xx"], stats["5xx"]) == (15, 10, 3, 2)


def test_lb_made_failures_are_counted_when_every_backend_is_down(spawn, tmp_path):
    dead = {"name": "dead", "address": f"127.0.0.1:{free_port()}"}
    lb = spawn(Lb, tmp_path, [dead], health={"interval": "30s"})
    assert [get(lb.port, "/").status for _ in range(3)] == [502] * 3
    samples = scrape(lb)
    assert value(samples, "lb_failed_requests_total", reason="502") == 3
    assert value(samples, "lb_upstream_connect_errors_total", backend="dead") == 9   # 3 tries each
    assert value(samples, "lb_retries_total") == 6
    totals = lb.ctl("show stats")["stats"]["totals"]
    assert totals["failed"] == {"502": 3} and totals["lb_failures"] == 3 and totals["retries"] == 6


def test_show_stats_quantiles_match_what_the_client_measured(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])
    measured = []
    for ms in [50] * 10 + [300]:
        started = time.monotonic()
        assert get(lb.port, f"/slow?ms={ms}").status == 200
        measured.append((time.monotonic() - started) * 1000)
    stats = lb.ctl("show stats web1")["stats"]
    assert stats["p50_ms"] == pytest.approx(statistics.median(measured), rel=0.10)
    assert stats["p99_ms"] == pytest.approx(max(measured), rel=0.10)


def test_show_latency_merges_a_group_over_a_short_window(spawn, tmp_path):
    fast, slow = spawn(Backend, "web1"), spawn(Backend, "web2")
    # One worker: round robin alternates within one data plane (each worker keeps its own turn).
    lb = spawn(Lb, tmp_path, [fast.config(), slow.config()], balance="round_robin", workers=1)
    for _ in range(10):
        get(lb.port, "/slow?ms=20")       # round robin: web1 gets these...
        get(lb.port, "/slow?ms=150")      # ...and web2 these
    both = lb.ctl("show latency web1,web2 30s")["latency"]
    assert both["servers"] == ["web1", "web2"] and both["requests"] == 20
    assert both["p50_ms"] == pytest.approx(20, rel=0.5) and both["p99_ms"] == pytest.approx(150, rel=0.25)
    web1, web2 = (lb.ctl(f"show latency {n} 30s")["latency"] for n in ("web1", "web2"))
    assert web1["requests"] == web2["requests"] == 10
    assert web1["p99_ms"] < 60 and web2["p50_ms"] > 120
    # raw: the bucket counts, which merged give the group's quantiles (lb deploy does this over lbs)
    raw = [lb.ctl(f"show latency {n} 30s raw")["latency"]["buckets"] for n in ("web1", "web2")]
    merged = Counter()
    for buckets in raw:
        merged.update({int(bucket): count for bucket, count in buckets.items()})
    assert sum(merged.values()) == 20
    assert [stats.ms(q) for q in stats.bucket_quantiles(merged, (0.5, 0.9, 0.99))] == [both["p50_ms"], both["p90_ms"],
                                                                           both["p99_ms"]]
    for line, error in (("show latency web1 5s bogus", "expects 'raw' or nothing after the WINDOW"),
                        ("show latency web1,web9 5s", "unknown server 'web9'"),
                        ("show latency web1 5m", "expects a WINDOW from 1s to 60s"),
                        ("show latency web1", "usage: show latency NAME[,NAME...] WINDOW")):
        reply = lb.ctl(line)
        assert not reply["ok"] and error in reply["error"], reply


def test_metrics_listener_answers_only_metrics(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])
    host, port = lb.config["metrics"]["listen"].split(":")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{host}:{port}/other", timeout=5)
    assert info.value.code == 404
    assert get(lb.port, "/metrics").getheader("X-Backend-Node") == "web1"   # the public port proxies


def test_the_grafana_dashboard_queries_only_metrics_lb_exports(spawn, tmp_path):
    import json
    import re

    from conftest import ROOT
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])
    get(lb.port, "/")
    lb.ctl("drain web1")
    url = f"http://{lb.config['metrics']['listen']}/metrics"
    families = list(text_string_to_metric_families(urllib.request.urlopen(url, timeout=5).read().decode()))
    # a family with no sample yet (no failure so far) is still exported, with HELP and TYPE
    exported = {f.name + suffix for f in families for suffix in ("", "_total", "_bucket")}
    dashboard = json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\blb_[a-z_]+", target["expr"])}
    assert used and used <= exported, used - exported
