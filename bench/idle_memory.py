"""What an idle lb holds: RSS of the master and of its one worker at rest, and per idle
client connection (opened, one request answered, kept alive: all at once, and 200 at a
time 1.5 s apart, as clients come over time) and per connection that sent nothing yet.

    .venv/bin/python bench/idle_memory.py [--connections 2000]

lb runs with `workers: 1` over bench/fast_backend.py; the worker's RSS is read from
/proc before and after --connections clients connect (and, in the second phase, each
sends one keep-alive request and reads its answer). The idle tree is reported as RSS summed
(each process's shared pages counted in each) and as PSS summed (counted once).
Writes bench/results/idle-memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
RESULTS = ROOT / "bench" / "results"
REST_WAIT_S = 1.5           # past lb's REST_AFTER_S (1 s) and its sweep


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: pages shared with other processes (the interpreter, libssl,
    the master's and worker's common libraries) counted once across them, not in each."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_until(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.05)


def settle(pid: int) -> int:
    """RSS once it stops moving (two equal reads 0.5 s apart, at most 10 s)."""
    last, deadline = -1, time.monotonic() + 10
    while time.monotonic() < deadline:
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    return last


def open_connections(port: int, count: int, request: bool, wave: int = 0) -> list[socket.socket]:
    """`count` connections (each with one request answered, when `request`); with `wave`, that
    many at a time, REST_WAIT_S apart: clients that came over time, as a server's idle ones
    did, and whose parsers lb gave back (REST_AFTER_S) to be used again."""
    socks = []
    for i in range(count):
        if wave and i and i % wave == 0:
            time.sleep(REST_WAIT_S)
        sock = socket.create_connection(("127.0.0.1", port))
        if request:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got or not got.endswith(b"\n"):
                got += sock.recv(65536)
        socks.append(sock)
    return socks


def start_lb(work: Path, backend_port: int) -> tuple[subprocess.Popen, int]:
    """lb, one worker, on a config of its own; (process, port) once its admin socket is up."""
    port = free_port()
    config = work / f"lb-{port}.yaml"
    config.write_text(f"listen: 127.0.0.1:{port}\nworkers: 1\naccess_log: off\nstate_file: {work}/lb-{port}.state\n"
                      f"admin: {{socket: {work}/lb-{port}.sock}}\nmetrics: {{listen: 127.0.0.1:{free_port()}}}\n"
                      f"backends: [{{name: web1, address: '127.0.0.1:{backend_port}', version: v1}}]\n")
    lb = subprocess.Popen([PYTHON, "-m", "lb.cli", "serve", "-c", str(config)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: (work / f"lb-{port}.sock").exists(), 30)
    return lb, port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * args.connections + 100)), hard))
    work = Path(tempfile.mkdtemp(prefix="lb-mem"))
    backend_port = free_port()
    backend = subprocess.Popen([PYTHON, str(ROOT / "bench" / "fast_backend.py"), str(backend_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = {"bench": "idle_memory", "connections": args.connections}
    try:
        for phase, request, wave in (("silent", False, 0), ("kept_alive", True, 0),
                                     ("kept_alive_over_time", True, 200)):
            lb, port = start_lb(work, backend_port)           # a fresh one: no memory freed before
            try:
                worker = children(lb.pid)[0]
                report["master_kib"], report["worker_kib"] = settle(lb.pid), settle(worker)
                report["master_pss_kib"], report["worker_pss_kib"] = pss_kib(lb.pid), pss_kib(worker)
                report["idle_rss_mib"] = round((report["master_kib"] + report["worker_kib"]) / 1024, 1)
                report["idle_pss_mib"] = round((report["master_pss_kib"] + report["worker_pss_kib"]) / 1024, 1)
                before = settle(worker)
                socks = open_connections(port, args.connections, request, wave)
                after = settle(worker)
                report[f"{phase}_kib_per_connection"] = round((after - before) / args.connections, 2)
                for sock in socks:
                    sock.close()
            finally:
                stop(lb)
    finally:
        stop(backend)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "idle-memory.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
