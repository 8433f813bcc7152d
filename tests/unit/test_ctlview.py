"""What `lb ctl` shows on a terminal (lb/deploy/ctlview.py), and the audit log's lines
(lb/control/admin.py: audit), from replies and command lines alone."""

import json
import logging

import pytest

from lb.control.admin import audit
from lb.deploy.ctlview import SERVER_COLUMNS, render, table_lines

SERVER = {"name": "web1", "address": "127.0.0.1:9001", "version": "v1", "weight": 100, "max_conns": 0,
          "state": "ready", "health": "up", "inflight": 2, "tunnels": 0, "requests": 41, "errors": 1,
          "effective_weight": 100.0, "last_check": "ok"}
STATS = {"name": "web1", "version": "v1", "requests": 41, "2xx": 40, "3xx": 0, "4xx": 0, "5xx": 1,
         "lb_failures": 0, "retries": 1, "connect_errors": 0, "p50_ms": 1.5, "p99_ms": None,
         "since": "2026-11-26T18:00:00Z"}
TOTALS = {"requests": 41, "2xx": 40, "3xx": 0, "4xx": 0, "5xx": 1, "lb_failures": 0, "connect_errors": 0,
          "retries": 1, "failed": {"no_backend": 3}, "queued": 0, "since": "2026-11-26T18:00:00Z"}


def test_table_lines_align_columns_and_show_none_as_a_dash():
    assert table_lines(("a", "bb"), [("xyz", None), (1, 22)]) == ["a    bb", "xyz  -", "1    22"]


@pytest.mark.parametrize("words, reply, lines", [
    (["show", "servers"], {"ok": True, "servers": [SERVER], "queued": 0}, [
        "name  address         version  weight  state  health  inflight  tunnels  requests  errors",
        "web1  127.0.0.1:9001  v1       100     ready  up      2         0        41        1"]),
    (["show", "servers"], {"ok": True, "servers": [{**SERVER, "health": "ejected", "ejected_for_s": 4.5}],
                           "queued": 3}, [
        "name  address         version  weight  state  health   inflight  tunnels  requests  errors",
        "web1  127.0.0.1:9001  v1       100     ready  ejected  2         0        41        1",
        "ejected: web1 (4.5s left)",
        "queued: 3 requests wait for a connection slot"]),
    (["show", "stats", "web1"], {"ok": True, "stats": STATS}, [
        "name  version  requests  2xx  3xx  4xx  5xx  lb_failures  retries  connect_errors  p50_ms  p99_ms",
        "web1  v1       41        40   0    0    1    0            1        0               1.5     -"]),
    (["show", "stats"], {"ok": True, "stats": {"totals": TOTALS, "servers": [STATS]}}, [
        "name   version  requests  2xx  3xx  4xx  5xx  lb_failures  retries  connect_errors  p50_ms  p99_ms",
        "web1   v1       41        40   0    0    1    0            1        0               1.5     -",
        "total           41        40   0    0    1    0            1        0",
        "since 2026-11-26T18:00:00Z; failed by lb: no_backend 3; queued: 0; latency over the last minute"]),
])
def test_servers_and_stats_are_tables(words, reply, lines):
    assert render(words, reply).splitlines() == lines


@pytest.mark.parametrize("words, reply", [
    (["show", "info"], {"ok": True, "pid": 1}),
    (["show", "servers"], {"ok": False, "error": "lb is stopping"}),
    (["frobnicate"], {"ok": False, "error": "unknown command 'frobnicate'"}),
])
def test_other_replies_and_errors_are_indented_json(words, reply):
    assert render(words, reply) == json.dumps(reply, indent=2)


def test_the_header_names_the_servers_columns():
    assert render(["show", "servers"], {"ok": True, "servers": []}).split() == list(SERVER_COLUMNS)


@pytest.mark.parametrize("line, reply, logged", [
    ("drain web1\n", {"ok": True}, "uid 1000 pid 42: drain web1 -> ok"),
    ("  set   weight web1 5\r\n", {"ok": True}, "uid 1000 pid 42: set weight web1 5 -> ok"),
    ("drain web11", {"ok": False, "error": "unknown server 'web11'"},
     "uid 1000 pid 42: drain web11 -> error: unknown server 'web11'"),
    ("set version web1 v\x1b[2J", {"ok": False, "error": "expected a version label"},
     "uid 1000 pid 42: set version web1 v\\x1b[2J -> error: expected a version label"),
    ("upgrade", {"ok": True}, "uid 1000 pid 42: upgrade -> ok"),
    ("show servers", {"ok": True}, None),
    ("wait web1 drained", {"ok": True}, None),
    ("help", {"ok": True}, None),
    ("frobnicate", {"ok": False, "error": "unknown command"}, None),
    ("drain", {"ok": False, "error": "usage: drain NAME"}, None),
])
def test_the_audit_log_has_a_line_for_each_command_that_changes_something(caplog, line, reply, logged):
    with caplog.at_level(logging.INFO, logger="lb.audit"):
        audit(line, "uid 1000 pid 42", reply)
    assert [r.getMessage() for r in caplog.records if r.name == "lb.audit"] == ([logged] if logged else [])
