"""The status page's model and its first paint: the pool, the versions and the version move at
a glance, as HAProxy's stats page and Traefik's dashboard give. No I/O.

Theory of operation
-------------------
`History` is sampled once a second (lb/control/status.py) with the counters lb keeps anyway:
each version's requests (summed over the nodes, by the version that served them, so a relabel
moves nothing) and each node's requests and 5xx. It keeps `HISTORY_S` seconds of requests per
second per version, for the chart, and `WINDOW_S` seconds of each node's counters, for its
req/s and 5xx rate now. Memory is bounded: a ring of HISTORY_S points per version, versions
with no request over the whole history dropped.

`why_out` says in words why a node takes no traffic (an operator's drain or maint, an
ejection, the node's own request to be drained, failing checks, a version mismatch, weight 0):
the page shows the word beside the colour, never the colour alone.

`render` writes the whole page with the tables filled in (the first paint works without
JavaScript); the page's own script (lb/data/status.js) then asks for `/status.json` once a
second and redraws the tables and the chart (SVG, drawn by the script).
"""

from __future__ import annotations

import html
import json
from collections import deque

HISTORY_S = 600           # the chart: ten minutes
WINDOW_S = 10             # a node's req/s and 5xx rate, a version's share: over the last ten seconds


class History:
    """Requests per second per version over HISTORY_S, and each node's recent counters."""

    def __init__(self):
        self.times: deque[float] = deque(maxlen=HISTORY_S)
        self.rates: dict[str, deque[float]] = {}
        self.last_totals: dict[str, int] | None = None
        self.last_at = 0.0
        self.nodes: dict[str, deque[tuple[float, int, int]]] = {}

    def sample(self, now: float, versions: dict[str, int], nodes: dict[str, tuple[int, int]]) -> None:
        """`versions`: requests served by each version so far; `nodes`: (requests, 5xx) so far."""
        if self.last_totals is not None and now > self.last_at:
            elapsed = now - self.last_at
            self.times.append(now)
            for version in versions.keys() | self.rates.keys():
                rate = max(versions.get(version, 0) - self.last_totals.get(version, 0), 0) / elapsed
                ring = self.rates.get(version)
                if ring is None:
                    ring = self.rates[version] = deque([0.0] * (len(self.times) - 1), maxlen=HISTORY_S)
                ring.append(round(rate, 2))
            for version in [v for v, ring in self.rates.items() if not any(ring)]:
                del self.rates[version]
        self.last_totals, self.last_at = dict(versions), now
        for name, (requests, errors) in nodes.items():
            ring = self.nodes.get(name)
            if ring is None:
                ring = self.nodes[name] = deque(maxlen=WINDOW_S + 1)
            ring.append((now, requests, errors))
        for name in self.nodes.keys() - nodes.keys():
            del self.nodes[name]

    def node_rates(self, name: str) -> tuple[float, float | None]:
        """(requests per second, share of them that were 5xx) over the node's window; None
        when it served nothing."""
        ring = self.nodes.get(name)
        if not ring or len(ring) < 2:
            return 0.0, None
        (t0, r0, e0), (t1, r1, e1) = ring[0], ring[-1]
        served = max(r1 - r0, 0)
        return round(served / (t1 - t0), 2) if t1 > t0 else 0.0, round(max(e1 - e0, 0) / served, 4) if served else None

    def shares(self) -> dict[str, float]:
        """Each version's share of the requests of the last WINDOW_S seconds ({} when none)."""
        served = {version: sum(list(ring)[-WINDOW_S:]) for version, ring in self.rates.items()}
        total = sum(served.values())
        return {version: round(count / total, 4) for version, count in served.items()} if total else {}

    def chart(self) -> dict:
        """The chart's data: seconds ago of each point (oldest first) and each version's rates."""
        last = self.times[-1] if self.times else 0.0
        return {"ago_s": [round(last - t, 1) for t in self.times],
                "versions": {version: list(ring) for version, ring in self.rates.items()}}


# health and admin state -> why the node takes no traffic, in words (None: it does)
def why_out(node: dict) -> str | None:
    state, health = node["state"], node["health"]
    if state in ("draining", "drained"):
        return f"{state} by an operator"
    if state == "maint":
        return "in maintenance"
    if health == "ejected":
        return "ejected after failures"
    if health == "drain_requested":
        return "asked to be drained"
    if health == "down":
        return "failing its health checks"
    if health == "version_mismatch":
        return "reports another version"
    if node.get("weight") == 0:
        return "weight 0"
    return None


NODE_COLUMNS = (("name", "Node"), ("version", "Version"), ("state", "State"), ("health", "Health"),
                ("weight", "Weight"), ("inflight", "In flight"), ("rps", "Req/s (10 s)"),
                ("p99_ms", "p99 ms (60 s)"), ("error_rate", "5xx (10 s)"), ("why_out", "Out because"))
VERSION_COLUMNS = (("version", "Version"), ("nodes", "Nodes"), ("ready", "Ready"), ("capacity", "Ready capacity"),
                   ("share", "Share of traffic (10 s)"), ("pinned_users", "Users pinned"),
                   ("pinned_requests", "Pinned requests"))


def pinned_users(pins: dict) -> dict[str, int]:
    """Each version's users as lb pinned them since it started: pins handed out (assignments),
    plus the users moved onto it, minus those moved off (lb holds no per-user state: a client
    that drops the cookie is counted again at its next request)."""
    users = dict(pins["assignments"])
    for (source, target, _), count in pins["migrations"].items():
        users[target] = users.get(target, 0) + count
        users[source] = users.get(source, 0) - count
    return {version: max(count, 0) for version, count in users.items()}


MEMBER_COLUMNS = (("id", "Member"), ("version", "lb version"), ("applied_revision", "Applied revision"),
                  ("lease_left_s", "Lease left s"), ("nodes_up", "Nodes up"), ("inflight", "In flight"))


def member_row(member: dict) -> dict:
    """One lb of the fleet (a `show cluster` row) as the page's table shows it."""
    nodes = member.get("nodes") if isinstance(member.get("nodes"), list) else []
    up = sum(1 for n in nodes if isinstance(n, dict) and n.get("health") == "up" and n.get("state") == "ready")
    return {"id": ("* " if member.get("self") else "") + str(member.get("id")), "version": member.get("version"),
            "applied_revision": member.get("applied_revision"), "lease_left_s": member.get("lease_left_s"),
            "nodes_up": f"{up} of {len(nodes)}",
            "inflight": sum(n.get("inflight", 0) for n in nodes if isinstance(n, dict)
                            and isinstance(n.get("inflight"), int))}


def cell(key: str, value) -> str:
    """One value as the page writes it (the script writes the same: lb/data/status.js)."""
    if value is None:
        return "" if key == "why_out" else "–"
    if key == "error_rate" or key == "share":
        return f"{value * 100:.1f}%"
    if key == "capacity":
        return f"{value:g}"
    return str(value)


def _rows(items: list[dict], columns, kind: str) -> str:
    out = []
    for item in items:
        out.append(f'<tr class="{kind}" data-name="{html.escape(str(item[columns[0][0]]))}">')
        for index, (key, _) in enumerate(columns):
            text = html.escape(cell(key, item.get(key)))
            tag = 'th scope="row"' if index == 0 else "td"
            css = f' class="{html.escape(str(item.get(key)))}"' if key in ("state", "health") else ""
            out.append(f"<{tag} data-key=\"{key}\"{css}>{text}</{tag.split()[0]}>")
        out.append("</tr>")
    return "".join(out)


def _fleet(fleet: dict | None) -> str:
    """Cluster mode's section: every member as etcd lists it (hidden without a cluster)."""
    if fleet is None:
        return '<section id="fleet-section" hidden><table id="fleet"><tbody></tbody></table><p id="fleet-error"></p>' \
               '</section>'
    error = html.escape(fleet_text(fleet))
    return (f'<section id="fleet-section" aria-labelledby="fleet-title"><table id="fleet">'
            f'<caption id="fleet-title">The fleet, as etcd lists it (* this lb)</caption>'
            f'<thead>{_head(MEMBER_COLUMNS)}</thead><tbody>{_rows(fleet["members"] or [], MEMBER_COLUMNS, "member")}'
            f'</tbody></table><p id="fleet-error">{error}</p></section>')


def fleet_text(fleet: dict) -> str:
    """The line under the fleet's table (the script writes the same)."""
    if fleet["error"]:
        return f"etcd: {fleet['error']}"
    return "Reading the fleet from etcd." if fleet["members"] is None else ""


def _head(columns) -> str:
    return "<tr>" + "".join(f'<th scope="col">{html.escape(title)}</th>' for _, title in columns) + "</tr>"


def move_text(move: dict) -> str:
    if move["target"] is None:
        return "No version move declared."
    text = f"Moving to {move['target']}: {move['on_target']} of {move['nodes']} nodes on it."
    return text + (f" In progress: {move['in_progress']}." if move["in_progress"] else " Done.")


# what a deploy's note (lb/deploy/progress.py) may hold: key -> the types its value may have
_TEXT, _NUMBER = (str,), (int, float)
NOTE_FIELDS = {"to": _TEXT + (type(None),), "by": _TEXT, "phase": _TEXT, "plan": (list, type(None)),
               "batch": (dict, type(None)),
               "steps": (dict,), "bake_until": _NUMBER + (type(None),), "gates": (dict,),
               "result": _TEXT + (type(None),), "done": (int,)}
BATCH_FIELDS = {"index": (int,), "of": (int,), "nodes": (list,), "canary": (bool,), "more": (int,)}


def clean_note(note) -> dict:
    """A deploy's note as the page may show it: the known keys with values of their types
    (unknown keys, from a newer deploy, left out). Raises ValueError saying what is wrong."""
    if not isinstance(note, dict):
        raise ValueError("expected a JSON object")
    clean = {}
    for key, value in note.items():
        kinds = NOTE_FIELDS.get(key)
        if kinds is None:
            continue
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise ValueError(f"{key}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r:.40}")
        clean[key] = value
    for key in ("steps", "gates"):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in clean.get(key, {}).items()):
            raise ValueError(f"{key}: expected an object of strings")
    if not all(isinstance(nodes, list) and all(isinstance(n, str) for n in nodes) for nodes in clean.get("plan") or []):
        raise ValueError("plan: expected a list of batches, each a list of node names")
    batch = clean.get("batch")
    if batch is not None:
        clean["batch"] = {}
        for key, value in batch.items():
            kinds = BATCH_FIELDS.get(key)
            if kinds is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"batch.{key}: expected {kinds[0].__name__}, got {value!r:.40}")
            if kinds is not None:
                clean["batch"][key] = value
        if not all(isinstance(n, str) for n in clean["batch"].get("nodes", [])):
            raise ValueError("batch.nodes: expected a list of node names")
    return clean


def deploy_text(deploy: dict | None, now: float) -> str:
    """What the last `lb deploy` said of itself (lb/deploy/progress.py, checked by clean_note), in words."""
    if deploy is None:
        return "No deploy has reported to this lb since it started."
    note, ago = deploy["note"], max(now - deploy["at"], 0.0)
    text = f"Deploy to {note.get('to') or '?'} ({note.get('by') or '?'}): {note.get('phase') or '?'}"
    batch = note.get("batch")
    if batch:
        nodes = " ".join(batch.get("nodes", [])) + (f" and {batch['more']} more" if batch.get("more") else "")
        text += (f", batch {batch.get('index', '?')} of {batch.get('of', '?')}"
                 f"{' (canary)' if batch.get('canary') else ''}: {nodes}")
    plan = note.get("plan")
    if plan:
        text += (f"; plan: {' | '.join(' '.join(nodes) for nodes in plan)} "
                 f"({note.get('done', 0)} of {sum(map(len, plan))} nodes done)")
    if note.get("bake_until") is not None and note["bake_until"] > now:
        text += f", bake ends in {note['bake_until'] - now:.0f} s"
    gates = note.get("gates")
    if gates:
        text += "; gates: " + ", ".join(f"{name} {outcome}" for name, outcome in gates.items())
    if note.get("result"):
        text += f"; result: {note['result']}"
    return text + f". Heard {ago:.0f} s ago."


def _actions(csrf: str | None, nodes: list[dict]) -> str:
    """status.actions: one labelled form (not redrawn each second, so a choice is not lost)."""
    if csrf is None:
        return ""
    options = "".join(f'<option>{html.escape(node["name"])}</option>' for node in nodes)
    return f"""<section aria-labelledby="actions-title">
<h2 id="actions-title">Change a node</h2>
<form id="actions" method="post" action="status/action">
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<label for="action-name">Node</label> <select id="action-name" name="name">{options}</select>
<label for="action-kind">Action</label> <select id="action-kind" name="action"><option value="drain">drain</option>
<option value="ready">ready</option><option value="maint">maint</option><option value="weight">set weight</option></select>
<label for="action-weight">Weight (for set weight)</label>
<input id="action-weight" name="weight" type="number" min="0" max="1000" value="100">
<button type="submit">Apply</button>
<output id="action-result" aria-live="polite"></output>
</form>
</section>"""


def render(snapshot: dict, csrf: str | None = None) -> str:
    """The whole page, tables filled in; its script and style are its own files (lb/data,
    served beside it); `csrf`: the actions form's value, when actions are on."""
    lb_line = (f"lb {snapshot['lb']['version']}, pid {snapshot['lb']['pid']}, "
               f"workers: {snapshot['lb']['workers']}, up since {snapshot['lb']['started_iso']}")
    if snapshot["lb"]["panic"]:
        lb_line += " — PANIC: every node fails its checks, routing to them all"
    # the snapshot rides along for the script's first draw: no "<", ">" or "&" in it, so no
    # "</script" or "<!--" can end or bend the script element (JSON reads \u003c as "<")
    data = json.dumps(snapshot).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lb status</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="status.css">
</head>
<body>
<header>
<h1>lb status</h1>
<p id="lb">{html.escape(lb_line)}</p>
<p id="updated">As of {html.escape(snapshot['time_iso'])}.</p>
</header>
<main>
<section aria-labelledby="move-title">
<h2 id="move-title">Version move and deploy</h2>
<p id="move">{html.escape(move_text(snapshot['move']))}</p>
<p id="deploy">{html.escape(deploy_text(snapshot.get('deploy'), snapshot['time']))}</p>
</section>
<section aria-labelledby="chart-title">
<h2 id="chart-title">Requests per second by version, last ten minutes</h2>
<figure>
<svg id="chart" role="img" aria-labelledby="chart-title" viewBox="0 0 800 200"></svg>
<figcaption id="legend"></figcaption>
</figure>
</section>
{_actions(csrf, snapshot['nodes'])}
<section aria-labelledby="versions-title">
<table id="versions">
<caption id="versions-title">Versions, oldest first</caption>
<thead>{_head(VERSION_COLUMNS)}</thead>
<tbody>{_rows(snapshot['versions'], VERSION_COLUMNS, 'version')}</tbody>
</table>
</section>
{_fleet(snapshot.get('fleet'))}
<section aria-labelledby="nodes-title">
<table id="nodes">
<caption id="nodes-title">Nodes</caption>
<thead>{_head(NODE_COLUMNS)}</thead>
<tbody>{_rows(snapshot['nodes'], NODE_COLUMNS, 'node')}</tbody>
</table>
</section>
</main>
<script id="first" type="application/json">{data}</script>
<script src="status.js"></script>
</body>
</html>
"""
