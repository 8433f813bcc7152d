"""`lb demo` (what `make demo` runs) on free ports: it deploys, reports, and stops what it started."""

import json
import random
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import PYTHON, ROOT, port_open


def demo_config(tmp_path: Path) -> tuple[Path, dict]:
    config = yaml.safe_load((ROOT / "config" / "lb.yaml").read_text())
    base = free_port_run(2 + len(config["backends"]))        # distinct, and none ephemeral
    config.update(listen=f"127.0.0.1:{base}", metrics={"listen": f"127.0.0.1:{base + 1}"},
                  admin={"socket": str(Path(tempfile.mkdtemp(prefix="lb", dir="/tmp")) / "lb.sock")})
    for i, backend in enumerate(config["backends"]):
        backend["address"] = f"127.0.0.1:{base + 2 + i}"
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


@pytest.mark.parametrize("bad, expected", [
    (False, ["deploy exit 0", " 0 failed, 0 users sent back from v2 to v1"]),
    (True, ["deploy exit 1", "  0 of the failures are the bad release's own 500s", "the rest of the failures: 0"]),
])
def test_the_demo_deploys_and_cleans_up(tmp_path, bad, expected):
    path, config = demo_config(tmp_path)
    result = subprocess.run([PYTHON, "-m", "lb.cli", "demo", "-c", str(path), *(["--bad"] if bad else [])],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout[result.stdout.index("demo summary:"):]
    assert all(text in summary for text in expected), summary
    events = [line for line in result.stdout.splitlines() if line.startswith('{"t"')]
    assert any('"event": "summary"' in line for line in events)      # the deploy's JSON lines (no tty)
    if bad:     # the --verify gate failed the canary before it took users
        failure = next(json.loads(line) for line in events if '"event": "failed"' in line)
        assert (failure["node"], failure["step"]) == ("web1", "verify"), failure
    ports = [int(config["listen"].rsplit(":", 1)[1])] + \
        [int(b["address"].rsplit(":", 1)[1]) for b in config["backends"]]
    assert not any(port_open(port) for port in ports), "the demo left a process listening"
    assert not list((tmp_path / "run" / "demo").glob("*.pid"))


def free_port_run(count: int) -> int:
    """The first of `count` consecutive ports that can be bound, below the kernel's ephemeral
    range: a port inside it may become the local end of any connection the demo itself opens
    (its users, its checks) between this choice and the demo's bind, which failed a run."""
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10000, first_ephemeral - count)
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports below {first_ephemeral}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_demo_moves_to_other_ports_with_port_base(tmp_path):
    base = free_port_run(12)                             # lb, /metrics, 10 backends
    result = subprocess.run([PYTHON, "-m", "lb.cli", "demo", "--port-base", str(base), "--users", "5"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"and lb on 127.0.0.1:{base};" in result.stdout
    assert f"demo: watch it live at http://127.0.0.1:{base + 1}/status" in result.stdout
    assert "deploy exit 0" in result.stdout[result.stdout.index("demo summary:"):]
    config = yaml.safe_load((tmp_path / "run" / f"demo-{base}.yaml").read_text())
    assert config["metrics"]["listen"] == f"127.0.0.1:{base + 1}"
    assert [b["address"] for b in config["backends"]] == [f"127.0.0.1:{base + 2 + i}" for i in range(10)]
    assert f"lb listening on 127.0.0.1:{base}" in (tmp_path / "run" / "demo-lb.log").read_text()
    assert not any(port_open(port) for port in range(base, base + 12)), "the demo left a process listening"
    assert not list((tmp_path / "run" / "demo").glob("*.pid"))
