"""lb/control/cluster.py's decisions without etcd: the member's record and key, when to write
it again, the backoff, the link's state table and what it logs, show cluster's rows and table.
Against a real etcd: tests/e2e/test_cluster.py."""

import asyncio
import json
import logging

import pytest

from lb.control.admin import Admin
from lb.control.cluster import (BACKOFF_MAX_S, DOWN, LINK, MIN_PUT_INTERVAL_S, UNKNOWN, UP, Membership,
                                backoff_s, member_id, member_record, member_rows, members_prefix, should_put)
from lb.control import cluster as cluster_module
from lb.control.etcd import EtcdError, KeyValue
from lb.control.plane import Control
from lb.core.config import parse_config
from lb.core.errors import CommandError
from lb.deploy.ctlview import render

BACKENDS = "backends:\n  - {name: web1, address: '127.0.0.1:9001'}\n  - {name: web2, address: '127.0.0.1:9002'}\n"
CLUSTER = BACKENDS + "cluster: {endpoints: ['127.0.0.1:1', '127.0.0.1:2'], name: prod, lease_ttl: 3s}\n"


@pytest.mark.parametrize("failures, pause_s", [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0),
                                               (60, BACKOFF_MAX_S)])
def test_the_backoff_doubles_and_is_bounded(failures, pause_s):
    assert backoff_s(failures) == pause_s


A, B = {"generation": 1}, {"generation": 2}


@pytest.mark.parametrize("record, last, last_put_at, now, put", [
    (A, A, 0.0, 100.0, False),                          # unchanged: never written again
    (B, A, 0.0, MIN_PUT_INTERVAL_S, True),              # changed, and the interval passed
    (B, A, 10.0, 10.0 + MIN_PUT_INTERVAL_S - 0.1, False),   # changed, too soon: at the next tick
    (A, None, 0.0, 5.0, True),
])
def test_a_record_is_written_again_only_when_changed_and_not_too_often(record, last, last_put_at, now, put):
    assert should_put(record, last, last_put_at, now) is put


def test_the_link_table_has_every_state_and_event():
    assert set(LINK) == {(state, event) for state in (UNKNOWN, UP, DOWN) for event in ("ok", "error")}
    assert {new for new, _ in LINK.values()} <= {UP, DOWN}


@pytest.mark.parametrize("events, said", [
    (["ok", "ok", "ok"], ["registered"]),
    (["error", "error", "ok"], ["unreachable", "back"]),
    (["ok", "error", "error", "error", "ok", "ok", "error", "ok"], ["registered", "lost", "back", "lost", "back"]),
])
def test_the_link_says_each_change_once_not_each_retry(events, said):
    state, heard = UNKNOWN, []
    for event in events:
        state, message = LINK[state, event]
        heard += [message] if message else []
    assert heard == said


def membership(control=None) -> Membership:
    return Membership(control, parse_config(CLUSTER).cluster, "/run/lb/lb.sock", host="lb-1")


def test_the_member_is_named_by_host_and_admin_socket_under_the_fleets_prefix():
    member = membership()
    assert member_id("lb-1", "/run/lb/lb.sock") == member.id == "lb-1:/run/lb/lb.sock"
    assert members_prefix("prod") == "/lb/prod/members/"
    assert member.key == "/lb/prod/members/lb-1:/run/lb/lb.sock"
    assert member.info() == {"name": "prod", "endpoints": ["127.0.0.1:1", "127.0.0.1:2"], "connected": False,
                             "last_error": None, "member_id": "lb-1:/run/lb/lb.sock"}


def test_membership_logs_a_lost_connection_and_its_return_once_each(caplog):
    member = membership()
    caplog.set_level(logging.INFO, "lb.cluster")
    for event, error in [("ok", None), ("error", "refused"), ("error", "refused again"), ("error", "timeout"),
                         ("ok", None), ("ok", None)]:
        member._note(event, error)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "registered in etcd" in messages[0]
    assert "etcd connection lost (refused)" in messages[1] and "lb serves on" in messages[1]
    assert "etcd reachable again" in messages[2]
    assert member.connected and member.info()["last_error"] == "timeout"


async def test_the_record_says_who_and_each_nodes_state_and_nothing_that_ticks():
    control = Control(parse_config(CLUSTER), asyncio.get_running_loop())
    control.place_nodes()
    assert control.cluster.id.endswith(":" + control.config.resolve(control.config.admin.socket))
    record = member_record(control, control.cluster.identity)
    assert record == member_record(control, control.cluster.identity)     # unchanged lb: same record
    assert record["applied_revision"] == 0 and record["generation"] == control.generation
    assert record["id"] == control.cluster.id and record["version"] and record["started"] == round(control.started, 3)
    assert record["nodes"] == [{"name": "web1", "version": "v1", "state": "ready", "health": "up", "inflight": 0},
                               {"name": "web2", "version": "v1", "state": "ready", "health": "up", "inflight": 0}]
    control.set_admin_state(control.pool.backends["web2"], "drain")
    assert member_record(control, control.cluster.identity) != record
    json.dumps(record)


async def test_show_cluster_without_a_cluster_section_says_cluster_mode_is_off():
    control = Control(parse_config(BACKENDS), asyncio.get_running_loop())
    assert control.cluster is None
    with pytest.raises(CommandError, match="cluster mode is off"):
        await Admin(control, None).show_cluster()


PREFIX = "/lb/prod/members/"
RECORD = {"id": "a:/s", "version": "1.2", "applied_revision": 0, "generation": 7, "started": 1.5, "pid": 42,
          "nodes": [{"name": "web1", "version": "v1", "state": "ready", "health": "up", "inflight": 3}]}


def kv(member: str, value) -> KeyValue:
    return KeyValue(PREFIX + member, value if isinstance(value, bytes) else json.dumps(value).encode(), 5, lease=9)


def test_member_rows_mark_this_lb_and_show_what_a_record_lacks_as_null():
    rows = member_rows((kv("a:/s", RECORD), kv("b:/s", {"version": "1.1"}), kv("c:/s", b"garbage")),
                       [8, 3, -1], PREFIX, "b:/s")
    assert rows[0] == {"id": "a:/s", "self": False, "lease_left_s": 8,
                       **{k: RECORD[k] for k in ("version", "applied_revision", "generation", "started", "pid",
                                                 "nodes")}}
    assert rows[1]["self"] and rows[1]["version"] == "1.1" and rows[1]["nodes"] is None
    assert rows[2]["error"].startswith("not a member record") and not rows[2]["self"]


def test_lb_ctl_shows_the_members_as_a_table():
    reply = {"ok": True, "cluster": "prod", "member_id": "b:/s", "revision": 12, "members": [
        {"id": "a:/s", "self": False, "lease_left_s": 8, **RECORD,
         "nodes": [{"name": "web1", "health": "up"}, {"name": "web2", "health": "down"}]},
        {**RECORD, "id": "b:/s", "self": True, "lease_left_s": 9}]}
    assert render(["show", "cluster"], reply).splitlines() == [
        "id      version  applied_revision  lease_left_s  generation  nodes",
        "  a:/s  1.2      0                 8             7           web2:down web1:up",
        "* b:/s  1.2      0                 9             7           web1:up",
        "cluster prod: 2 members at etcd revision 12; * is this lb"]
    off = {"ok": False, "error": "cluster mode is off: this lb's config has no cluster: section"}
    assert json.loads(render(["show", "cluster"], off)) == off


async def test_show_cluster_is_bounded_when_etcd_hangs(monkeypatch):
    """A member that accepts and never answers: `show cluster` answers an error in time,
    naming the endpoints, instead of holding the admin command."""
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)   # accepts, never answers
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(cluster_module, "SHOW_TIMEOUT_S", 0.3)
    config = BACKENDS + f"cluster: {{endpoints: ['127.0.0.1:{port}'], name: prod}}\n"
    member = Membership(None, parse_config(config).cluster, "/run/lb/lb.sock", host="lb-1")
    started = asyncio.get_running_loop().time()
    with pytest.raises(EtcdError, match=f"did not answer within 0.3s .*127.0.0.1:{port}"):
        await member.members()
    assert asyncio.get_running_loop().time() - started < 1.0
    server.close()
