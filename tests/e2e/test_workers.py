"""`lb serve` as a master with worker processes: one view of the pool, whatever their number.

The rest of the e2e suite runs with `workers: auto` (the CPUs available; 2 on the CI box)
except where a test says `workers=1`; these tests are about the processes themselves.
"""

import json
import os
import signal
from pathlib import Path

from conftest import Backend, Lb, get, steady_load, wait_for, wait_for_requests


def established_clients(pid: int, port: int) -> int:
    """Client connections to `port` that process `pid` holds (/proc: its socket inodes
    matched against the established TCP sockets)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:
            count += 1
    return count


async def test_a_killed_worker_fails_only_its_own_connections_and_is_replaced(spawn, tmp_path):
    backends = [spawn(Backend, f"web{i}") for i in (1, 2)]
    lb = spawn(Lb, tmp_path, [b.config() for b in backends], workers=2)
    workers = wait_for(lambda: len(lb.worker_pids()) == 2 and lb.worker_pids(), 5, "2 workers")
    async with steady_load(lb, 8) as load:           # 8 keep-alive users, one connection each
        await wait_for_requests(load, 200)
        victim = workers[0]
        held = established_clients(victim, lb.port)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda: victim not in lb.worker_pids() and len(lb.worker_pids()) == 2,
                            5, "the master to start a new worker")
        await wait_for_requests(load, len(load.records) + 300)
    # Each user whose connection that worker held saw it close (and then reconnected); no other did.
    assert replaced and len(load.failures) == held, (held, load.failures)
    assert all("Closed" in what or "Error" in what for _, what in load.failures), load.failures
    info = lb.ctl("show info")
    assert info["worker_restarts"] == 1 and len(info["workers"]) == 2
    assert sorted(w["restarts"] for w in info["workers"]) == [0, 1]
    servers = wait_for(lambda: all(s["inflight"] == 0 for s in lb.ctl("show servers")["servers"])
                       and lb.ctl("show servers")["servers"], 5, "nothing in flight")
    assert all(s["inflight"] >= 0 and s["tunnels"] == 0 for s in servers)


async def test_show_stats_counts_what_the_clients_counted_over_every_worker(spawn, tmp_path):
    backends = [spawn(Backend, f"web{i}") for i in (1, 2, 3)]
    lb = spawn(Lb, tmp_path, [b.config() for b in backends], workers=2)
    async with steady_load(lb, 8) as load:
        await wait_for_requests(load, 600)
    assert load.failures == []
    stats = lb.ctl("show stats")["stats"]        # answered once every worker has reported
    assert stats["totals"]["requests"] == sum(s["requests"] for s in stats["servers"]) == len(load.records)
    lines = wait_for(lambda: len(lb.access_lines()) == len(load.records) and lb.access_lines(), 5,
                     "one access line per request")
    # Whole JSON lines (access_lines parses each), every one naming its worker.
    assert {line["worker"] for line in lines} <= {0, 1}


def test_workers_exit_when_the_master_is_killed(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], workers=2)
    workers = wait_for(lambda: len(lb.worker_pids()) == 2 and lb.worker_pids(), 5, "2 workers")
    assert get(lb.port, "/").status == 200
    lb.signal(signal.SIGKILL)
    lb.proc.wait(5)

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
        except FileNotFoundError:
            return True
    assert wait_for(lambda: all(gone(pid) for pid in workers), 5, "the workers to exit")


def test_the_master_answers_show_info(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], workers=2)
    info = lb.ctl("show info")
    assert info["ok"] and info["pid"] == lb.pid and info["worker_restarts"] == 0
    assert sorted(w["worker"] for w in info["workers"]) == [0, 1]
    assert sorted(w["pid"] for w in info["workers"]) == sorted(lb.worker_pids())
    assert json.dumps(info)            # plain data


# Writes down which process imported it, then fails that process's start.
POISON = """import os, sys
with open({marker!r}, "a") as marker:
    marker.write(f"{{os.getpid()}} {{sys.argv}}\\n")
raise ImportError("imported from the folder lb was started in: " + __file__)
"""


def test_no_process_lb_starts_imports_from_the_folder_lb_was_started_in(spawn, tmp_path):
    """`python -m` puts the current folder first on sys.path: modules left there that shadow
    what lb imports (yaml at once, uvloop when a process starts its loop; both in the master
    and the workers) must run in no worker and no upgraded master, also with `-c` relative to
    that folder. (h2 was the workers' own until lb/core/http2 replaced it.)"""
    folder, marker = tmp_path / "started-here", tmp_path / "imported"
    folder.mkdir()
    for module in ("yaml", "uvloop"):
        (folder / f"{module}.py").write_text(POISON.format(marker=str(marker)))
    backend = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [backend.config()], workers=2, cwd=folder)
    assert get(lb.port).status == 200
    first_workers = lb.worker_pids()
    reply = lb.upgrade()
    assert reply["ok"], (reply, marker.read_text() if marker.exists() else "")
    assert len(lb.worker_pids()) == 2 and not set(lb.worker_pids()) & set(first_workers)
    assert get(lb.port).status == 200
    assert not marker.exists(), marker.read_text()
