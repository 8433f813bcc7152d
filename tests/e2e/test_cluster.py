"""Cluster mode's membership (issue 31) with real processes: one real etcd member (Debian's
etcd-server, started by tests/e2e/etcd.py) and three `lb serve` with `cluster:` set."""

from __future__ import annotations

import os
import signal
import urllib.request

import pytest

from conftest import Backend, Lb, free_port, get, wait_for
from etcd import EtcdCluster
from supervise import gone
from test_cli import on_a_terminal

LEASE_TTL_S = 4             # short, so that a killed lb leaves within seconds; not so short that a
                            # busy box's late renewal loses it
WAIT_S = 15.0


@pytest.fixture
def etcd(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd", 1, free_port)
    yield cluster
    cluster.stop()


def cluster_lbs(spawn, tmp_path, etcd, count: int) -> list[Lb]:
    web = spawn(Backend, "web1")
    section = {"endpoints": etcd.endpoints, "name": "test", "lease_ttl": f"{LEASE_TTL_S}s"}
    return [spawn(Lb, tmp_path, [web.config()], cluster=section, workers=1,
                  health={"interval": "100ms", "rise": 1}) for _ in range(count)]


def member_ids(lb: Lb) -> set[str] | None:
    reply = lb.ctl("show cluster")
    return {m["id"] for m in reply["members"]} if reply["ok"] else None


def own_id(lb: Lb) -> str:
    return lb.ctl("show info")["cluster"]["member_id"]


def cluster_metric(lb: Lb) -> str:
    port = lb.config["metrics"]["listen"].rsplit(":", 1)[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return next(line for line in answer.read().decode().splitlines()
                    if line.startswith("lb_cluster_connected{"))


def kill_whole_lb(lb: Lb) -> None:
    """SIGKILL to the master and each of its workers, by pid; all of them reaped or gone."""
    workers = lb.worker_pids()
    assert workers
    for pid in [lb.master_pid, *workers]:
        os.kill(pid, signal.SIGKILL)
    lb.proc.wait(5)
    wait_for(lambda: all(gone(pid) for pid in workers), 5, "the killed workers to go")


def test_show_cluster_lists_the_members_and_a_stopped_or_killed_lb_leaves(etcd, spawn, tmp_path):
    lbs = cluster_lbs(spawn, tmp_path, etcd, 3)
    ids = [own_id(lb) for lb in lbs]
    assert len(set(ids)) == 3 and all(i.endswith(str(lb.socket_path)) for i, lb in zip(ids, lbs))
    for lb in lbs:
        wait_for(lambda: member_ids(lb) == set(ids), WAIT_S, "every lb to list the three members")
    reply = lbs[0].ctl("show cluster")
    assert [m["id"] for m in reply["members"] if m["self"]] == [ids[0]]
    member = next(m for m in reply["members"] if m["self"])
    assert member["applied_revision"] == 0 and 0 <= member["lease_left_s"] <= LEASE_TTL_S
    assert [(n["name"], n["state"]) for n in member["nodes"]] == [("web1", "ready")]
    table = on_a_terminal("ctl", "-s", str(lbs[1].socket_path), "show", "cluster").splitlines()
    assert table[0].split() == ["id", "version", "applied_revision", "lease_left_s", "generation", "nodes"]
    assert [line.split()[1] for line in table[1:4] if line.startswith("* ")] == [ids[1]]
    assert all(line.endswith(" web1:up") for line in table[1:4]), table
    assert table[4].startswith("cluster test: 3 members at etcd revision ") and table[4].endswith("; * is this lb")
    info = lbs[0].ctl("show info")["cluster"]
    assert info == {"name": "test", "endpoints": etcd.endpoints, "connected": True, "last_error": None,
                    "member_id": ids[0]}

    assert lbs[0].upgrade()["ok"]                      # the new master takes the same key over
    wait_for(lambda: next(m["pid"] for m in lbs[0].ctl("show cluster")["members"] if m["self"]) == lbs[0].master_pid,
             WAIT_S, "the new master's record")
    assert lbs[2].stop() == 0                          # graceful: the lease is revoked, gone at once
    assert member_ids(lbs[0]) == set(ids[:2])
    kill_whole_lb(lbs[1])                              # a crash: gone when its lease expires
    wait_for(lambda: member_ids(lbs[0]) == {ids[0]}, WAIT_S, "the killed lb's lease to expire")
    # the old master's lease, last renewed before the upgrade, has expired by now (lbs[1]'s, renewed
    # every 0.67 s until its kill after the upgrade, just did): the key is the new master's lease's
    assert member_ids(lbs[0]) == {ids[0]} and own_id(lbs[0]) == ids[0]


def test_lbs_serve_on_without_etcd_and_say_so_once(etcd, spawn, tmp_path):
    lbs = cluster_lbs(spawn, tmp_path, etcd, 2)
    for lb in lbs:
        wait_for(lambda: lb.ctl("show info")["cluster"]["connected"], WAIT_S, "lb to reach etcd")
    assert cluster_metric(lbs[0]) == 'lb_cluster_connected{cluster="test"} 1.0'
    etcd.kill(0)
    for lb in lbs:
        wait_for(lambda: not lb.ctl("show info")["cluster"]["connected"], WAIT_S, "lb to see etcd gone")
        assert get(lb.port, "/").status == 200                   # etcd is in no request's path
    info = lbs[0].ctl("show info")["cluster"]
    assert info["last_error"] and etcd.endpoints[0] in info["last_error"], info
    assert cluster_metric(lbs[0]) == 'lb_cluster_connected{cluster="test"} 0.0'
    reply = lbs[0].ctl("show cluster")
    assert not reply["ok"] and etcd.endpoints[0] in reply["error"], reply
    # retried: the lease not renewed for a TTL, the loop asks for a new one (and says nothing more)
    wait_for(lambda: "/v3/lease/grant" in lbs[0].ctl("show info")["cluster"]["last_error"], WAIT_S,
             "lb to try a new lease")
    etcd.restart(0)
    for lb in lbs:
        wait_for(lambda: lb.ctl("show info")["cluster"]["connected"], WAIT_S, "lb to reach etcd again")
        wait_for(lambda: member_ids(lb) == {own_id(other) for other in lbs}, WAIT_S, "both members listed")
    log = lbs[0].stderr_path.read_text()
    assert log.count("etcd connection lost") == 1 and log.count("etcd reachable again") == 1, log


def test_show_cluster_without_a_cluster_section_says_cluster_mode_is_off(spawn, tmp_path):
    lb = spawn(Lb, tmp_path, [spawn(Backend, "web1").config()])
    assert lb.ctl("show cluster") == {"ok": False,
                                      "error": "cluster mode is off: this lb's config has no cluster: section"}
    assert lb.ctl("show info")["cluster"] is None


def test_a_member_that_hangs_does_not_keep_an_lb_out_of_the_fleet(spawn, tmp_path):
    """The first endpoint accepts connections and never answers (SIGSTOP: a partitioned or
    stuck member): lb's calls move on to the others, writes included, and it joins."""
    etcd = EtcdCluster(tmp_path / "etcd3", 3, free_port)
    try:
        os.kill(etcd.members[0].proc.pid, signal.SIGSTOP)
        lb = cluster_lbs(spawn, tmp_path, etcd, 1)[0]
        wait_for(lambda: lb.ctl("show info")["cluster"]["connected"], WAIT_S, "lb to join through the others")
        wait_for(lambda: member_ids(lb) == {own_id(lb)}, WAIT_S, "lb to list itself")
    finally:
        os.kill(etcd.members[0].proc.pid, signal.SIGCONT)
        etcd.stop()


async def test_two_lbs_with_one_member_id_are_told_so_once(etcd, tmp_path, caplog):
    """Cloned hosts: one hostname, one admin socket path, so one member key. Each sees at a
    renewal that the key is under another's lease, and says so once, as an error."""
    import asyncio
    import logging

    from lb.control.cluster import Membership
    from lb.control.plane import Control
    from lb.core.config import parse_config

    caplog.set_level(logging.INFO, "lb.cluster")
    config = parse_config("backends:\n  - {name: web1, address: '127.0.0.1:9001'}\n"
                          f"cluster: {{endpoints: {etcd.endpoints}, name: clones, lease_ttl: 3s}}\n")
    loop = asyncio.get_running_loop()
    clones = [Membership(Control(config, loop), config.cluster, "/run/lb/lb.sock", host="clone") for _ in range(2)]
    for clone in clones:
        clone.start()
    try:
        deadline = loop.time() + WAIT_S
        while not all(clone.shared for clone in clones):
            assert loop.time() < deadline, [r.getMessage() for r in caplog.records]
            await asyncio.sleep(0.1)
        said = [r for r in caplog.records if "written by another lb too" in r.getMessage()]
        assert len(said) == 2 and all(r.levelname == "ERROR" for r in said)
        assert "clone" in said[0].getMessage() and "give each host its own name" in said[0].getMessage()
    finally:
        for clone in clones:
            await clone.stop(leave=True)
