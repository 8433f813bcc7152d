"""What `lb deploy` shows: a live view on a terminal, one JSON event a line otherwise,
and a summary table at the end (on stderr when stdout carries JSON lines)."""

from __future__ import annotations

import json
import sys
import time

from ..core.stats import iso_utc
from .ctlview import table_lines

BAR_WIDTH = 30
NODES_PER_LINE = 5
# The summary's table: its column headings, and the key of a report's node each shows.
REPORT_COLUMNS = ("node", "was", "now", "state", "health", "result", "drain s", "update s", "up s", "judged")
REPORT_KEYS = ("name", "was", "version", "state", "health", "result", "drain_s", "update_s", "up_s", "judged")
# A cluster's fleet (lb/deploy/cluster.py) changing under the deploy: a line each on a terminal.
CLUSTER_EVENTS = {
    "member_left": "lb {member} left the cluster: {reason}",
    "member_joined": "lb {member} joined the cluster",
    "member_ignored": "etcd key {key} ignored: {reason}",
    "etcd_unreachable": "{message} ({error})",
    "etcd_back": "{message}",
}


class JsonView:
    """One JSON object a line on stdout: {"t", "event", ...fields}."""

    stats_interval_s = 5.0

    def __init__(self, out=None, err=None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def event(self, kind: str, fields: dict) -> None:
        self.out.write(json.dumps({"t": iso_utc(time.time()), "event": kind, **fields}) + "\n")
        self.out.flush()

    def stats(self, rows: list[dict]) -> None:
        self.event("stats", {"versions": rows})

    def plan(self, batches, notes, dry_run: bool, warnings=()) -> None:
        self.event("plan", {"batches": [{"nodes": list(b.nodes), "canary": b.canary} for b in batches],
                            "notes": notes, "warnings": list(warnings), "dry_run": dry_run})

    def error(self, message: str) -> None:
        self.event("error", {"error": message})
        self.err.write(f"lb deploy: {message}\n")

    def summary(self, report: dict) -> None:
        self.event("summary", report)
        self.err.write(format_report(report) + "\n")

    def close(self) -> None:
        pass


class TtyView:
    """A live block redrawn in place under the lines of what has happened."""

    stats_interval_s = 1.0

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.nodes: dict[str, str] = {}          # name -> its current step, as shown
        self.order: list[str] = []
        self.done = 0
        self.total = 0
        self.phase = "starting"
        self.bake_until = None
        self.versions: list[dict] = []
        self.gates: dict[str, str] = {}          # "kind name" -> its last outcome, for the batch in progress
        self._drawn = 0

    def plan(self, batches, notes, dry_run: bool, warnings=()) -> None:
        self.order = [n for b in batches for n in b.nodes]
        self.nodes = {n: "waiting" for n in self.order}
        self.total = len(self.order)
        lines = [f"plan: {len(batches)} batch(es)"] + [
            f"  {i}. {' '.join(b.nodes)}{'  (canary)' if b.canary else ''}" for i, b in enumerate(batches, 1)]
        lines += [f"  note: {n}" for n in notes]
        lines += [f"! warning: {w}" for w in warnings]
        self._print("\n".join(lines))

    def event(self, kind: str, fields: dict) -> None:
        line = self._apply(kind, fields)
        if line:
            self._print(line)
        else:
            self._draw()

    def _apply(self, kind: str, f: dict) -> str | None:
        """Update the live model; returns a line worth keeping, if any."""
        if kind == "step":
            arrow = "↺ " if f["direction"] == "back" else ""
            if f["status"] == "failed":
                self.nodes[f["node"]] = f"{arrow}{f['step']} FAILED"
                return "\n".join([f"✗ {f['node']}: {f['step']} failed: {f['reason']}",
                                  *(f"    | {line}" for line in f.get("output", []))])
            if f["status"] == "start":
                self.nodes[f["node"]] = f"{arrow}{f['step']}…"
            elif f["step"] == "wait up":
                self.nodes[f["node"]] = f"{arrow}up"
            return None
        if kind == "gate":
            return self._gate(f)
        if kind == "bake_extended":
            return (f"… {' '.join(f['nodes'])}: {f['requests']} of --min-requests {f['min_requests']} served; "
                    f"the bake goes on, up to {f['max_seconds']:g}s")
        if kind == "batch":
            self.gates = {}
            self.phase = f"batch {f['index']}/{f['of']}{' (canary)' if f['canary'] else ''}"
            return f"▶ batch {f['index']}/{f['of']}: {' '.join(f['nodes'])}{' (canary)' if f['canary'] else ''}"
        if kind == "bake":
            self.bake_until = time.monotonic() + f["seconds"]
            return None
        if kind == "baked":
            self.bake_until = None
            if f["ok"]:
                self.done += len(f["nodes"])
                for name in f["nodes"]:
                    self.nodes[name] = "done"
                note = f" ({f['p99_note']})" if f.get("p99_note") else ""
                warnings = "".join(f"\n! {w}" for w in f.get("warnings", []))
                return (f"✓ {' '.join(f['nodes'])} baked: {f['requests']} requests judged, "
                        f"5xx {f['error_rate']:.2%}, p99 {_ms(f['p99_ms'])}{note}{warnings}")
            return f"✗ bake failed: {'; '.join(f['reasons'])}"
        if kind in CLUSTER_EVENTS:
            return f"! {CLUSTER_EVENTS[kind].format(**f)}"
        if kind in ("failed", "rollback", "stopping", "interrupted", "replan"):
            self.phase = kind
            text = f.get("message") or f.get("reason") or f.get("resume") or ""
            return f"! {kind}{': ' + text if text else ''}"
        return None

    def _gate(self, f: dict) -> str | None:
        """A gate's outcome: kept in the live block; a failure or a warning also as a line."""
        label = f"{f['kind']} {f['name']}" if f["kind"] != "verify" else f"verify {f['name']}"
        self.gates[label] = f["outcome"]
        if f["outcome"] in ("fail", "warn") and f["kind"] != "verify":     # a failed verify is a failed step's line
            mark = "✗" if f["outcome"] == "fail" else "!"
            return "\n".join([f"{mark} {label}: {f['outcome']}: {f['detail']}",
                              *(f"    | {line}" for line in f.get("output", []))])
        return None

    def stats(self, rows: list[dict]) -> None:
        self.versions = rows
        self._draw()

    def error(self, message: str) -> None:
        self._print(f"lb deploy: {message}")

    def summary(self, report: dict) -> None:
        self._clear()
        self.out.write(format_report(report) + "\n")
        self.out.flush()
        self._drawn = 0

    def close(self) -> None:
        self._clear()

    # -- drawing -------------------------------------------------------------------
    def _print(self, text: str) -> None:
        self._clear()
        self.out.write(text + "\n")
        self._draw()

    def _clear(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        self._clear()
        lines = self._block()
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)

    def _block(self) -> list[str]:
        filled = BAR_WIDTH * self.done // self.total if self.total else 0
        baking = ""
        if self.bake_until is not None:
            baking = f"  baking, {max(self.bake_until - time.monotonic(), 0):.0f}s left"
        lines = [f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total} nodes  "
                 f"{self.phase}{baking}"]
        for i in range(0, len(self.order), NODES_PER_LINE):
            lines.append("  " + "  ".join(f"{n}: {self.nodes[n]:<14}" for n in self.order[i:i + NODES_PER_LINE]))
        if self.gates:
            lines.append("  gates: " + "  ".join(f"{label} {outcome}" for label, outcome in self.gates.items()))
        for row in self.versions:
            lines.append(f"  {row['version']:<8} {row['in_service']}/{row['nodes']} in service  "
                         f"{row['rps']:>7.1f} req/s  5xx {row['error_rate']:.2%}  p99 {_ms(row['p99_ms'])}")
        return lines


def _ms(value) -> str:
    return f"{value:.1f} ms" if value is not None else "-"


def format_report(report: dict) -> str:
    """The final summary table a person reads."""
    lines = [f"deploy to {report['to']}: {report['result']} in {report['seconds']:.0f}s "
             f"(exit {report['exit']})"]
    failure = report.get("failure")
    if failure:
        lines.append(f"  failed at {failure['node']}, step {failure['step']}: {failure['reason']}")
        for line in failure.get("output", [])[-5:]:
            lines.append(f"    | {line}")
        gate = failure.get("gate")
        if gate:
            lines.append(f"  gate that failed: {gate['kind']} {gate['name']} on batch "
                         f"{_batch_of(report, failure)}: {gate['detail']}")
    rows = [tuple(row.get(key, "") for key in REPORT_KEYS) for row in report["nodes"]]
    lines += ["  " + line for line in table_lines(REPORT_COLUMNS, rows)]
    lines += bake_lines(report.get("bakes", []))
    for label, why in report.get("lost", {}).items():
        lines.append(f"  lb {label} stopped answering ({why}); what it last said of each node is below")
    for label, why in report.get("left", {}).items():
        lines.append(f"  lb {label} left the cluster during the deploy ({why})")
    for row in report["nodes"]:
        on = row.get("on", {})
        if len({(v.get("version"), v.get("state"), v.get("health")) for v in on.values()}) > 1 or \
                any(v.get("lost") for v in on.values()):
            lines.append(f"  {row['name']} per lb: " + "; ".join(
                f"{label} {v.get('version', '?')} {v.get('state', '?')}/{v.get('health', '?')}"
                + (" (lost, last seen)" if v.get("lost") else "") for label, v in on.items()))
    lines += config_lines(report.get("config"))
    if report.get("resume"):
        lines.append(f"  resume with: {report['resume']}")
    lines.append(f"  log: {report['log']}")
    return "\n".join(lines)


def _batch_of(report: dict, failure: dict) -> str:
    names = set(failure["node"].split(","))
    return next((str(b["batch"]) for b in report.get("bakes", []) if names & set(b["nodes"])), "?")


def bake_lines(bakes: list[dict]) -> list[str]:
    """Per batch: the requests its bake judged and its gates' last outcomes."""
    lines = []
    for bake in bakes:
        judged = "not baked" if bake.get("requests") is None else f"{bake['requests']} requests judged"
        gates = "; ".join(f"{g['kind']} {g['name']} {g['outcome']}" + (f" ({g['detail']})" if g["outcome"] != "pass"
                                                                        else "")
                          for g in bake.get("gates", {}).values())
        lines.append(f"  batch {bake['batch']} ({' '.join(bake['nodes'])}): {judged}" + (f"; {gates}" if gates else ""))
        lines += [f"    warning: {w}" for w in bake.get("warnings", [])]
    return lines


def config_lines(config: dict | None) -> list[str]:
    """What the deploy did, or asks, about lb's config file (its versions go stale otherwise)."""
    if not config:
        return []
    if "to_change" in config:
        return (["  lb's config file still has the old versions: a new lb started on it with no state file "
                 "begins from them. Change these lines (or run with --write-config FILE):"]
                + [f"    {row['name']}: version: {row['was']}  ->  version: {row['version']}"
                   for row in config["to_change"]])
    if config.get("error"):
        return [f"  config {config['file']}: {config['error']}"]
    lines = [f"  config {config['file']}: " + (f"{len(config['changed'])} version(s) changed:"
                                              if config["changed"] else "already has these versions")]
    lines += [f"    line {row['line']}: {row['text']}" for row in config["changed"]]
    if config.get("missing"):
        lines.append(f"    not in the file (added at run time?): {', '.join(config['missing'])}")
    return lines
