"""Deploy gates judged on a real Prometheus server (issue 30): Debian's prometheus package,
started on a free port, scraping lb's /metrics every second. Never a mock."""

from __future__ import annotations

import asyncio

import pytest

from conftest import Backend, Lb, free_port, steady_load, wait_for_requests
from prometheus import Prometheus

FIVE_XX_SHARE = ('sum(rate(lb_requests_total{{version="{version}",code_class="5xx"}}[5s]))'
                 ' / sum(rate(lb_requests_total{{version="{version}"}}[5s]))')


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
