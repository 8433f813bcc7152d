"""What `lb deploy` shows: the live view's block, JSON lines, the summary table."""

import io
import json

from lb.deploy.plan import Batch
from lb.deploy.view import JsonView, TtyView, format_report

REPORT = {"to": "v2", "result": "failed and rolled back", "exit": 1, "seconds": 42.4,
          "failure": {"node": "web1", "step": "update", "reason": "exited with status 3",
                      "output": ["line 1", "no space left on device"]},
          "nodes": [{"name": "web1", "was": "v1", "version": "v1", "state": "ready", "health": "up",
                     "result": "rolled back", "drain_s": 0.1, "update_s": 2.5, "up_s": 1.2},
                    {"name": "web10", "was": "v1", "version": "v1", "state": "ready", "health": "up",
                     "result": "not started", "drain_s": "", "update_s": "", "up_s": ""}],
          "log": "lb-deploy.log", "resume": None}


def test_the_summary_table_names_the_failure_and_every_node():
    lines = format_report(REPORT).splitlines()
    assert lines[0] == "deploy to v2: failed and rolled back in 42s (exit 1)"
    assert lines[1] == "  failed at web1, step update: exited with status 3"
    assert lines[3] == "    | no space left on device"
    assert lines[4].split() == ["node", "was", "now", "state", "health", "result", "drain", "s", "update",
                                "s", "up", "s", "judged"]
    assert lines[5].split()[:6] == ["web1", "v1", "v1", "ready", "up", "rolled"]
    assert lines[5].index("v1") == lines[6].index("v1")        # columns line up
    assert lines[6] == "  web10  v1   v1   ready  up      not started"   # ctl's table: no padding at the end
    assert lines[-1] == "  log: lb-deploy.log"


def test_a_fleet_report_names_the_lost_lb_and_where_the_lbs_differ_per_node():
    up = {"version": "v1", "state": "ready", "health": "up"}
    report = {**REPORT, "lbs": ["a.sock", "b.sock", "c.sock"], "lost": {"c.sock": "cannot reach lb"},
              "nodes": [{**REPORT["nodes"][0], "on": {"a.sock": up, "b.sock": up,
                                                      "c.sock": {**up, "version": "v2", "lost": True}}},
                        {**REPORT["nodes"][1], "on": {"a.sock": up, "b.sock": up}}]}
    lines = format_report(report).splitlines()
    assert "  lb c.sock stopped answering (cannot reach lb); what it last said of each node is below" in lines
    assert ("  web1 per lb: a.sock v1 ready/up; b.sock v1 ready/up; c.sock v2 ready/up (lost, last seen)"
            in lines)
    assert not any(line.startswith("  web10 per lb") for line in lines)      # the lbs agree on it


def test_json_view_writes_one_event_a_line_and_the_table_to_stderr():
    out, err = io.StringIO(), io.StringIO()
    view = JsonView(out, err)
    view.plan([Batch(("web1",), True)], ["web4 is in maint: left alone"], False)
    view.event("step", {"node": "web1", "step": "drain", "status": "start"})
    view.summary(REPORT)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["plan", "step", "summary"]
    assert events[0]["batches"] == [{"nodes": ["web1"], "canary": True}]
    assert err.getvalue().startswith("deploy to v2: failed and rolled back")


def test_the_plans_warnings_are_in_its_event_and_on_their_own_line_in_the_live_view():
    out = io.StringIO()
    JsonView(out, io.StringIO()).plan([Batch(("web1",), True)], [], False, ["--verify: mind this"])
    assert json.loads(out.getvalue())["warnings"] == ["--verify: mind this"]
    out = io.StringIO()
    TtyView(out).plan([Batch(("web1",), True)], ["web4 is in maint: left alone"], False, ["--verify: mind this"])
    lines = out.getvalue().splitlines()
    assert lines[2:4] == ["  note: web4 is in maint: left alone", "! warning: --verify: mind this"]


def test_the_live_view_tracks_steps_bakes_and_versions():
    out = io.StringIO()
    view = TtyView(out)
    view.plan([Batch(("web1",), True), Batch(("web2", "web3"), False)], [], False)
    view.event("batch", {"index": 1, "of": 2, "nodes": ["web1"], "canary": True})
    view.event("step", {"node": "web1", "step": "update", "direction": "forward", "status": "start"})
    view.stats([{"version": "v1", "nodes": 2, "in_service": 2, "rps": 120.0, "error_rate": 0.0, "p99_ms": 4.2}])
    block = view._block()
    assert block[0].startswith("[" + "." * 30 + "] 0/3 nodes  batch 1/2 (canary)")
    assert "web1: update…" in block[1] and "web2: waiting" in block[1]
    assert block[2].split() == ["v1", "2/2", "in", "service", "120.0", "req/s", "5xx", "0.00%", "p99",
                                "4.2", "ms"]
    view.event("baked", {"nodes": ["web1"], "ok": True, "reasons": [], "requests": 80, "error_rate": 0.0,
                         "p99_ms": 5.0, "p99_note": "p99 not compared: 80 requests in the smaller group"})
    assert view._block()[0].startswith("[" + "#" * 10 + "." * 20 + "] 1/3 nodes")
    assert "✓ web1 baked: 80 requests judged, 5xx 0.00%, p99 5.0 ms (p99 not compared" in out.getvalue()
    view.event("step", {"node": "web2", "step": "update", "direction": "forward", "status": "failed",
                        "reason": "exited with status 1"})
    assert "✗ web2: update failed: exited with status 1" in out.getvalue()
    # each redraw first moves back over the previous block
    assert out.getvalue().count("\x1b[") >= 5


GATED = {**REPORT, "failure": {"node": "web2", "step": "check", "reason": "--check #1 (grep) on web2 exited with "
                                "status 1", "output": ["3 errors"],
                                "gate": {"kind": "check", "name": "#1", "outcome": "fail",
                                         "detail": "exited with status 1"}},
         "nodes": [{**REPORT["nodes"][0], "judged": 312}, {**REPORT["nodes"][1], "name": "web2", "judged": ""}],
         "bakes": [{"batch": 1, "nodes": ["web1"], "requests": 312, "warnings": ["thin bake: 40 requests judged"],
                    "gates": {"verify web1": {"kind": "verify", "name": "web1", "outcome": "pass", "detail": "ok"},
                              "evidence min-requests": {"kind": "evidence", "name": "min-requests",
                                                        "outcome": "warn", "detail": "thin"}}},
                   {"batch": 2, "nodes": ["web2"], "requests": None,
                    "gates": {"check #1": {"kind": "check", "name": "#1", "outcome": "fail",
                                           "detail": "exited with status 1"}}}]}


def test_the_summary_names_the_gate_that_failed_and_what_each_bake_judged():
    text = format_report(GATED)
    assert "  gate that failed: check #1 on batch 2: exited with status 1" in text
    assert "  batch 1 (web1): 312 requests judged; verify web1 pass; evidence min-requests warn (thin)" in text
    assert "    warning: thin bake: 40 requests judged" in text
    assert "  batch 2 (web2): not baked; check #1 fail (exited with status 1)" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("node"))
    assert header.split()[-1] == "judged" and "312" in text.splitlines()[text.splitlines().index(header) + 1]


def test_the_live_view_shows_gates_in_its_block_and_failures_as_lines():
    out = io.StringIO()
    view = TtyView(out)
    view.plan([Batch(("web1",), True)], [], False)
    view.event("batch", {"index": 1, "of": 1, "nodes": ["web1"], "canary": True})
    view.event("gate", {"batch": 1, "kind": "verify", "name": "web1", "outcome": "pass", "detail": "ok"})
    view.event("gate", {"batch": 1, "kind": "gate", "name": "err", "outcome": "inconclusive", "detail": "no data"})
    assert "  gates: verify web1 pass  gate err inconclusive" in view._block()
    view.event("bake_extended", {"nodes": ["web1"], "requests": 12, "min_requests": 100, "max_seconds": 50})
    assert "… web1: 12 of --min-requests 100 served; the bake goes on, up to 50s" in out.getvalue()
    view.event("gate", {"batch": 1, "kind": "check", "name": "#1", "outcome": "fail",
                        "detail": "exited with status 2", "output": ["ERROR x"]})
    assert "✗ check #1: fail: exited with status 2\n    | ERROR x" in out.getvalue()
    view.event("step", {"node": "web1", "step": "verify", "direction": "forward", "status": "failed",
                        "reason": "exited with status 7", "output": ["smoke: 500"]})
    view.event("gate", {"batch": 1, "kind": "verify", "name": "web1", "outcome": "fail", "detail": "exited with status 7",
                        "output": ["smoke: 500"]})
    assert "✗ web1: verify failed: exited with status 7\n    | smoke: 500" in out.getvalue()
    assert out.getvalue().count("smoke: 500") == 1          # the step's line says it; the gate's does not repeat it
    view.event("baked", {"nodes": ["web1"], "ok": True, "reasons": [], "warnings": ["thin bake: 3 requests"],
                         "requests": 3, "error_rate": 0.0, "p99_ms": None})
    assert "! thin bake: 3 requests" in out.getvalue()
