"""Cluster mode's membership (issue 31) with real processes: one real etcd member (Debian's
etcd-server, started by tests/e2e/etcd.py) and three `lb serve` with `cluster:` set."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest

from conftest import Backend, Lb, free_port, get, wait_for
from etcd import EtcdCluster, make_pki
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


def cluster_metric(lb: Lb, name: str = "lb_cluster_connected") -> str:
    port = lb.config["metrics"]["listen"].rsplit(":", 1)[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return next(line for line in answer.read().decode().splitlines() if line.startswith(name + "{"))


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
                    "member_id": ids[0], "applied_revision": 0, "refused": None}

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


# -- desired state (lb/control/desired.py): any lb's socket changes the fleet ------------------

def two_backend_lbs(spawn, tmp_path, etcd, count: int) -> list[Lb]:
    webs = [spawn(Backend, "web1"), spawn(Backend, "web2")]
    section = {"endpoints": etcd.endpoints, "name": "test", "lease_ttl": f"{LEASE_TTL_S}s"}
    lbs = [spawn(Lb, tmp_path, [web.config() for web in webs], cluster=section, workers=1,
                 health={"interval": "100ms", "rise": 1}) for _ in range(count)]
    for lb in lbs:       # every lb listed (a command waits only for the members it sees)
        wait_for(lambda: len(member_ids(lb) or ()) == count, WAIT_S, "every lb to list the others")
    return lbs


def states(lbs: list[Lb], name: str) -> list[str]:
    return [lb.server(name)["state"] for lb in lbs]


def nodes_served(lb: Lb, count: int) -> set[str]:
    return {get(lb.port, "/").headers["X-Backend-Node"] for _ in range(count)}


def test_a_change_on_one_lbs_socket_applies_on_every_lb_before_the_reply(etcd, spawn, tmp_path):
    lbs = two_backend_lbs(spawn, tmp_path, etcd, 3)
    ids = {own_id(lb) for lb in lbs}
    reply = lbs[1].ctl("drain web1")
    assert reply["ok"] and reply["server"]["state"] in ("draining", "drained"), reply
    assert set(reply["cluster"]["applied"]) == ids and reply["cluster"]["not_applied"] == [], reply
    revision = reply["cluster"]["revision"]
    assert revision > 0
    assert all(state in ("draining", "drained") for state in states(lbs, "web1"))     # no wait: applied
    for lb in lbs:
        wait_for(lambda: lb.server("web1")["state"] == "drained", WAIT_S, "web1 drained")
        assert nodes_served(lb, 6) == {"web2"}
        assert lb.ctl("show info")["cluster"]["applied_revision"] == revision
        assert cluster_metric(lb, "lb_cluster_applied_revision") == \
            f'lb_cluster_applied_revision{{cluster="test"}} {revision:.1f}'
    members = lbs[0].ctl("show cluster")["members"]
    assert {m["id"]: m["applied_revision"] for m in members} == {i: revision for i in ids}
    # the status page lists every member of the fleet, this lb marked
    from test_status import snapshot

    def listed() -> list:
        return (snapshot(lbs[0])["fleet"] or {}).get("members") or []
    wait_for(lambda: len(listed()) == 3 and all(m["applied_revision"] == revision for m in listed()), WAIT_S,
             "the status page's fleet")
    assert [m["id"] for m in listed() if m["id"].startswith("* ")] == ["* " + own_id(lbs[0])]

    reply = lbs[2].ctl("set weight web2 7")                # another lb's socket, the next revision
    assert reply["ok"] and reply["cluster"]["revision"] > revision and reply["cluster"]["not_applied"] == []
    assert [lb.server("web2")["weight"] for lb in lbs] == [7, 7, 7]
    assert lbs[0].ctl("ready web1")["ok"]
    assert states(lbs, "web1") == ["ready"] * 3
    assert lbs[0].ctl("ready web1")["cluster"]["revision"] == lbs[0].ctl("show info")["cluster"]["applied_revision"]

    # added on one lb, in maint on every lb; removed on another, gone everywhere
    assert lbs[0].ctl(f"add server web9 127.0.0.1:{free_port()} v1")["ok"]
    assert states(lbs, "web9") == ["maint"] * 3
    assert lbs[2].ctl("del server web9")["ok"]
    assert all(not lb.ctl("show server web9")["ok"] for lb in lbs)
    # each lb's state file (the local copy) has it all
    for lb in lbs:
        saved = json.loads(Path(lb.config["state_file"]).read_text())
        assert saved["servers"]["web2"]["weight"] == 7 and "web9" not in saved["servers"]


def test_changes_made_at_once_on_two_lbs_are_both_kept(etcd, spawn, tmp_path):
    """Two lbs write the desired state at the same moment: the transaction of one fails, and it
    runs its command again on the other's document; neither change is lost."""
    lbs = two_backend_lbs(spawn, tmp_path, etcd, 2)
    for round_ in range(5):
        lines = [(lbs[0], f"set weight web1 {10 + round_}"), (lbs[1], f"set weight web2 {20 + round_}")]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda pair: pair[0].ctl(pair[1]), lines))
        assert all(reply["ok"] for reply in replies), replies
        for lb in lbs:
            assert (lb.server("web1")["weight"], lb.server("web2")["weight"]) == (10 + round_, 20 + round_)


def test_a_returning_lb_catches_up_before_it_serves(etcd, spawn, tmp_path):
    lbs = two_backend_lbs(spawn, tmp_path, etcd, 3)
    away = lbs[2]
    away_id = own_id(away)
    kill_whole_lb(away)                     # its state file says web1 is ready
    reply = lbs[0].ctl("drain web1")        # waits for the killed lb until its lease expires
    assert reply["ok"] and reply["cluster"]["not_applied"] == [], reply
    assert away_id not in reply["cluster"]["applied"] and len(reply["cluster"]["applied"]) == 2
    assert lbs[1].ctl("set weight web2 9")["ok"]
    away._start()                            # back: its first answer already has the fleet's state
    assert (away.server("web1")["state"], away.server("web2")["weight"]) == ("drained", 9)
    assert nodes_served(away, 6) == {"web2"}
    assert away.ctl("show info")["cluster"]["applied_revision"] == lbs[0].ctl("show info")["cluster"][
        "applied_revision"]
    log = away.stderr_path.read_text()
    restarted = log[log.index("lb listening on") + 1:]      # the second start's lines
    assert restarted.index("caught up with the desired state at revision") < restarted.index("lb listening on"), log


def test_without_etcd_a_change_is_refused_and_nothing_changes(etcd, spawn, tmp_path):
    lbs = two_backend_lbs(spawn, tmp_path, etcd, 2)
    etcd.kill(0)
    reply = lbs[0].ctl("drain web1")
    assert not reply["ok"] and "etcd unreachable" in reply["error"] and "nothing changed" in reply["error"], reply
    assert states(lbs, "web1") == ["ready", "ready"]
    assert nodes_served(lbs[0], 8) == {"web1", "web2"}       # serving on, as before
    assert lbs[0].ctl("show servers")["ok"]                  # reads need no etcd
    etcd.restart(0)
    wait_for(lambda: lbs[0].ctl("drain web1")["ok"], WAIT_S, "a change to go through again")
    assert states(lbs, "web1")[1] in ("draining", "drained")


# -- TLS to etcd (cluster.tls) ------------------------------------------------------------------

def test_lbs_reach_etcd_over_tls_with_a_client_certificate_and_refuse_a_wrong_ca(spawn, tmp_path):
    files, paths = make_pki(tmp_path / "pki")
    etcd = EtcdCluster(tmp_path / "etcd-tls", 1, free_port, files)
    try:
        web = spawn(Backend, "web1")
        good = {"endpoints": etcd.endpoints, "name": "test", "lease_ttl": f"{LEASE_TTL_S}s",
                "tls": {"ca": str(paths["ca"]), "cert": str(paths["lb"]), "key": str(paths["lb-key"])}}
        lbs = [spawn(Lb, tmp_path, [web.config()], cluster=good, workers=1) for _ in range(2)]
        for lb in lbs:
            wait_for(lambda: lb.ctl("show info")["cluster"]["connected"], WAIT_S, "lb to reach etcd over TLS")
        reply = lbs[0].ctl("drain web1")
        assert reply["ok"] and len(reply["cluster"]["applied"]) == 2, reply
        assert lbs[1].server("web1")["state"] in ("draining", "drained")
        # etcd's certificate not from the CA lb trusts: never reached, said, and lb serves on
        wrong = {**good, "tls": {**good["tls"], "ca": str(paths["other-ca"])}}
        stranger = spawn(Lb, tmp_path, [web.config()], cluster=wrong, workers=1)
        wait_for(lambda: stranger.ctl("show info")["cluster"]["last_error"], WAIT_S, "the handshake to fail")
        info = stranger.ctl("show info")["cluster"]
        assert not info["connected"] and "certificate verify failed" in info["last_error"], info
        assert get(stranger.port, "/").status == 200
        # no client certificate: etcd refuses the handshake
        anonymous = {**good, "tls": {"ca": str(paths["ca"])}}
        nameless = spawn(Lb, tmp_path, [web.config()], cluster=anonymous, workers=1)
        wait_for(lambda: nameless.ctl("show info")["cluster"]["last_error"], WAIT_S, "etcd to refuse it")
        assert not nameless.ctl("show info")["cluster"]["connected"]
        assert {m["id"] for m in lbs[0].ctl("show cluster")["members"]} == {own_id(lb) for lb in lbs}
    finally:
        etcd.stop()
