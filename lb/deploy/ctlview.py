"""What `lb ctl` shows on a terminal: a table for the replies a person scans (`show servers`,
`show stats`), indented JSON for the others and for errors. Piped, `lb ctl` prints the
reply's JSON on one line instead, for scripts; this module is only for people."""

from __future__ import annotations

import json

from ..core.commands import parse
from ..core.errors import CommandError

SERVER_COLUMNS = ("name", "address", "version", "weight", "state", "health", "inflight", "tunnels",
                  "requests", "errors")
STATS_COLUMNS = ("name", "version", "requests", "2xx", "3xx", "4xx", "5xx", "lb_failures", "retries",
                 "connect_errors", "p50_ms", "p99_ms")


def table_lines(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    """Columns left-aligned to their widest cell; None shows as '-'."""
    cells = [header] + [tuple("-" if value is None else str(value) for value in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]


def servers_table(reply: dict) -> list[str]:
    servers = reply["servers"]
    lines = table_lines(SERVER_COLUMNS, [tuple(s.get(key) for key in SERVER_COLUMNS) for s in servers])
    ejected = [f"{s['name']} ({s['ejected_for_s']}s left)" for s in servers if "ejected_for_s" in s]
    if ejected:
        lines.append("ejected: " + ", ".join(ejected))
    if reply.get("queued"):
        lines.append(f"queued: {reply['queued']} requests wait for a connection slot")
    return lines


def stats_table(reply: dict) -> list[str]:
    stats = reply["stats"]
    if "totals" not in stats:                     # show stats NAME: one server
        return table_lines(STATS_COLUMNS, [tuple(stats.get(key) for key in STATS_COLUMNS)])
    totals = stats["totals"]
    rows = [tuple(s.get(key) for key in STATS_COLUMNS) for s in stats["servers"]]
    rows.append(("total", "", *(totals.get(key, "") for key in STATS_COLUMNS[2:-2]), "", ""))
    lines = table_lines(STATS_COLUMNS, rows)
    failed = ", ".join(f"{reason} {count}" for reason, count in sorted(totals.get("failed", {}).items()))
    lines.append(f"since {totals.get('since')}; failed by lb: {failed or 'none'}; queued: {totals.get('queued', 0)}; "
                 f"latency over the last minute")
    return lines


CLUSTER_COLUMNS = ("id", "version", "applied_revision", "lease_left_s", "generation", "nodes")


def cluster_table(reply: dict) -> list[str]:
    """One row a member (this lb's id marked `*`); nodes as NAME:HEALTH, the unhealthy first."""
    rows = []
    for member in reply["members"]:
        nodes = sorted(member.get("nodes", []), key=lambda n: (n["health"] == "up", n["name"]))
        shown = {**member, "id": ("* " if member["self"] else "  ") + member["id"],
                 "nodes": " ".join(f"{n['name']}:{n['health']}" for n in nodes) or member.get("error")}
        rows.append(tuple(shown.get(key) for key in CLUSTER_COLUMNS))
    lines = table_lines(CLUSTER_COLUMNS, rows)
    lines.append(f"cluster {reply['cluster']}: {len(rows)} members at etcd revision {reply['revision']}; "
                 f"* is this lb")
    return lines


TABLES = {("show", "servers"): servers_table, ("show", "stats"): stats_table,     # by command words
          ("show", "cluster"): cluster_table}


def render(words: list[str], reply: dict) -> str:
    """A reply as a person reads it: the command's table when it has one, else JSON."""
    try:
        command, _ = parse(" ".join(words))
    except CommandError:
        command = None
    table = TABLES.get(command.words) if command is not None else None
    if table is None or not reply.get("ok"):
        return json.dumps(reply, indent=2)
    return "\n".join(table(reply))
