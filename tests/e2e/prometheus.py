"""A real Prometheus server for the tests (issue 30's gates are judged on one, never a mock).

`ensure_installed()` installs Debian's `prometheus` package when the machine lacks it
(idempotent: nothing happens when the binary is there; the tests run as root, as CI does),
and stops the system service the package may start: the tests run their own instance.
`Prometheus(folder, targets)` starts one on a free port of 127.0.0.1, scraping each
`host:port` target's /metrics every second, with its data in `folder`; it is stopped by
its pid. `query(promql)` runs an instant query; `wait_for_series(promql)` waits until a
query has a result (the first scrapes take a second or two).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import debian

BINARY = "prometheus"
START_TIMEOUT_S = 60.0


def ensure_installed() -> str:
    """The prometheus binary's path; installs the Debian package first when it is missing."""
    return debian.ensure_installed(BINARY, BINARY, BINARY)


class Prometheus:
    """One Prometheus server scraping `targets` (host:port, /metrics) every second."""

    def __init__(self, folder: Path, targets: list[str], port: int):
        binary = ensure_installed()
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(json.dumps({           # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "lb", "static_configs": [{"targets": targets}]}],
        }))
        self.log = open(folder / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(folder)
        except BaseException:
            self.stop()                  # the fixture never gets this object to stop: do it here
            raise

    def _wait_ready(self, folder: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready():
            assert self.proc.poll() is None, f"prometheus exited: {(folder / 'prometheus.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> list:
        """An instant query's result vector (Prometheus' JSON `data.result`)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for_series(self, promql: str, timeout_s: float = 30.0) -> list:
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if result:
                return result
            assert time.monotonic() < deadline, f"no series for {promql} after {timeout_s}s"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
