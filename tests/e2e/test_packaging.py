"""A non-editable install works: `pip install .` into a fresh venv, then `lb serve` with no -c
in an empty directory serves the embedded default, keeping its runtime files in ./run/."""

import os
import shutil
import signal
import subprocess
import sys

from conftest import ROOT, port_open, wait_for

EMBEDDED_PORTS = (8080, 9900)          # the embedded default's listener and /metrics


def test_pip_install_then_lb_serve_with_no_config_in_an_empty_directory(tmp_path):
    source = tmp_path / "clone"
    shutil.copytree(ROOT / "lb", source / "lb", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(source)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    lb = str(venv / "bin" / "lb")
    assert not any(port_open(p) for p in EMBEDDED_PORTS), "another program holds 8080 or 9900"
    check = subprocess.run([lb, "check"], cwd=empty, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "10 backends" in check.stdout, check.stderr
    serving = subprocess.Popen([lb, "serve"], cwd=empty, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (port_open(8080) and (empty / "run" / "lb.sock").exists())
                 or serving.poll() is not None, 30, "lb serve to listen")
        assert serving.poll() is None, serving.stderr.read().decode()
        ctl = subprocess.run([lb, "ctl", "show", "servers"], cwd=empty, capture_output=True, text=True,
                             timeout=30)
        assert ctl.returncode == 0 and ctl.stdout.count('"name"') == 10, ctl.stdout + ctl.stderr
        drained = subprocess.run([lb, "ctl", "maint", "web3"], cwd=empty, capture_output=True, timeout=30)
        assert drained.returncode == 0 and (empty / "run" / "lb.state").exists()
    finally:
        serving.send_signal(signal.SIGTERM)
        assert serving.wait(30) == 0
    site = next((venv / "lib").glob("python*/site-packages/lb"))
    assert (site / "data" / "lb.yaml").exists() and not (site / "data" / "run").exists()
    # the demo's WebSocket library comes with the demo extra only
    backend = subprocess.run([lb, "backend", "--listen", "127.0.0.1:1", "--version", "v1"], cwd=empty,
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": ""})
    has_wsproto = subprocess.run([str(venv / "bin" / "python"), "-c", "import wsproto"],
                                 capture_output=True).returncode == 0
    assert not has_wsproto and backend.returncode == 2 and "lb[demo]" in backend.stderr, backend.stderr
