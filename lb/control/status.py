"""The status page on the metrics listener: `GET /status` (the page, its tables filled in) and
`GET /status.json` (what the page's script redraws from, once a second).

The model and the HTML are lb/core/statusview.py; here the control plane's counters are
sampled once a second into its `History`, and a snapshot is made when asked: every node (as
`show servers` has it, with its req/s, p99 and 5xx rate now, and why it is out), every version
(nodes, ready capacity, its share of the last seconds' requests, pinned requests), the
version move (target, nodes on it, why it is still in progress) and the chart's ten minutes.
With workers it is the merged view (the master's counters are every worker's reports).

Access: with `status.token_file` every path asks for HTTP Basic auth, the password being the
file's content (any user name; compared in constant time). With `status.actions` too, the page
has a form that drains, readies, holds in maint or weighs a node: `POST /status/action`, a
form whose `csrf` field must be this process's random value (written only into an
authenticated page), whose Origin, when the browser sends one, must be this listener's own,
with a bounded body; the command then goes through the admin socket's own path (`Admin.execute`:
the same checks, audit log and, in cluster mode, the fleet).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import secrets
import time
from urllib.parse import parse_qs
from importlib import resources

import lb

from ..core import statusview
from ..core.errors import ConfigError, LbError
from ..core.stats import iso_utc

SAMPLE_S = 1.0
MAX_FORM_BYTES = 4096
ACTIONS = {"drain": "drain {name}", "ready": "ready {name}", "maint": "maint {name}",
           "weight": "set weight {name} {weight}"}
MEMBERS_EVERY = 2               # samples between two reads of the fleet's members (cluster mode)
VIEWED_S = 10.0                 # the members are read only while someone looked at the page this recently
SNAPSHOT_S = 0.5                # a snapshot is made at most this often, however many pages ask (a change
                                # of the routing view or of the deploy's note makes a new one at once)


def page_file(name: str) -> str:
    return resources.files("lb").joinpath("data", name).read_text(encoding="utf-8")


class StatusPage:
    """The page's history and snapshots, over the control plane."""

    def __init__(self, control, admin=None):
        self.control = control
        config = control.config.status
        self.token = read_token(control.config) if config.token_file is not None else None
        self.admin = admin if config.actions else None     # the page's actions run as admin commands
        self.csrf = secrets.token_urlsafe(24)               # this process's: a page from before a restart is refused
        self.history = statusview.History()
        self.files = {name: page_file(name).encode() for name in ("status.js", "status.css")}
        self._timer: asyncio.TimerHandle | None = None
        self.members: list[dict] | None = None      # cluster mode: the fleet as etcd lists it
        self.members_error: str | None = None
        self._reading: asyncio.Task | None = None
        self._samples = 0
        self.viewed_at = float("-inf")
        self._snapshot: tuple[float, tuple, dict] | None = None     # (made at, under, snapshot): every viewer's

    def start(self) -> None:
        self._sample()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reading is not None:
            self._reading.cancel()

    async def _read_members(self) -> None:
        try:
            found = await self.control.cluster.members()        # bounded (lb/control/cluster.py)
            self.members, self.members_error = [statusview.member_row(m) for m in found["members"]], None
        except LbError as exc:
            self.members_error = exc.message

    def _sample(self) -> None:
        try:
            self._count()
        finally:
            self._timer = asyncio.get_running_loop().call_later(SAMPLE_S, self._sample)

    def _count(self) -> None:
        versions: dict[str, int] = {}
        nodes = {}
        for node in self.control.pool.backends.values():
            requests = errors = 0
            for version, counts in node.stats.by_class.items():
                served = sum(counts)
                versions[version] = versions.get(version, 0) + served
                requests += served
                errors += counts[4]
            nodes[node.name] = (requests, errors)
        now = time.monotonic()
        self.history.sample(now, versions, nodes)
        self._samples += 1
        if self.control.cluster is not None and self._samples % MEMBERS_EVERY == 1 and \
                now - self.viewed_at < VIEWED_S and (self._reading is None or self._reading.done()):
            self._reading = asyncio.get_running_loop().create_task(self._read_members())

    def snapshot(self) -> dict:
        """What the page shows now; made at most every SNAPSHOT_S unless the routing view (a drain,
        a weight, a health change...) or the deploy's note changed since."""
        now = time.monotonic()
        if self.control.cluster is not None and now - self.viewed_at >= VIEWED_S:
            self.members = None                  # not read while nobody looked: none shown, not stale ones
            if self._reading is None or self._reading.done():
                self._reading = asyncio.get_running_loop().create_task(self._read_members())
        self.viewed_at = now
        under = (self.control.generation, self.control.deploy_note)
        if self._snapshot is None or now - self._snapshot[0] >= SNAPSHOT_S or self._snapshot[1] != under:
            self._snapshot = (now, under, self._make())
        return self._snapshot[2]

    def _make(self) -> dict:
        control, pool, now = self.control, self.control.pool, time.monotonic()
        nodes = []
        for backend in pool.backends.values():
            row = backend.describe(control.now())
            rps, error_rate = self.history.node_rates(backend.name)
            row.update(rps=rps, error_rate=error_rate, p99_ms=backend.stats.summary(now)["p99_ms"])
            row["why_out"] = statusview.why_out(row)
            nodes.append(row)
        shares = self.history.shares()
        pinned = statusview.pinned_users(control.pins) if control.pinning_on else {}
        versions = []
        for row in pool.version_rows():
            version = row["version"]
            ready = sum(1 for n in pool.backends.values() if n.version == version and n.takes_traffic)
            versions.append({"version": version, "nodes": row["nodes"], "ready": ready,
                             "capacity": row["ready_capacity"],
                             "share": shares.get(version, 0.0) if shares else None,
                             "pinned_requests": control.pins["pinned_requests"][version]
                             if control.pinning_on else None,
                             "pinned_users": pinned.get(version, 0) if control.pinning_on else None})
        target = pool.target
        move = {"target": target, "in_progress": pool.move_in_progress(), "nodes": len(pool.backends),
                "on_target": sum(1 for n in pool.backends.values() if n.version == target)}
        started = control.started
        note = control.deploy_note
        return {"time": round(time.time(), 3), "time_iso": iso_utc(time.time()),
                "deploy": {"at": note[0], "note": note[1]} if note is not None else None,
                "lb": {"version": lb.__version__, "pid": os.getpid(), "started_iso": iso_utc(started),
                       "workers": len(control.link.info()) if control.link is not None else 0,
                       "panic": pool.panic},
                "nodes": nodes, "versions": versions, "move": move, "chart": self.history.chart(),
                "fleet": {"members": self.members, "error": self.members_error}
                if self.control.cluster is not None else None}

    def html(self) -> bytes:
        csrf = self.csrf if self.admin is not None else None
        return statusview.render(self.snapshot(), csrf).encode()

    # -- access and actions ---------------------------------------------------------------------
    def authorized(self, headers: dict[str, str]) -> bool:
        """With a token, HTTP Basic auth whose password is the token (any user name)."""
        if self.token is None:
            return True
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), self.token.encode())

    async def act(self, headers: dict[str, str], body: bytes, peer: str) -> tuple[int, dict]:
        """A POST /status/action: (HTTP status, the reply). The admin command's own reply on 200."""
        if self.admin is None:
            return 404, {"ok": False, "error": "the status page's actions are off (status.actions)"}
        origin = headers.get("origin")
        if origin is not None and origin != f"http://{headers.get('host', '')}":
            return 403, {"ok": False, "error": f"a form from another origin ({origin}) is refused"}
        if headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return 415, {"ok": False, "error": "expected a form (application/x-www-form-urlencoded)"}
        form = {key: values[0] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}
        if not hmac.compare_digest(form.get("csrf", "").encode(), self.csrf.encode()):
            return 403, {"ok": False, "error": "the form's csrf value is missing or stale: reload the page"}
        template, name = ACTIONS.get(form.get("action", "")), form.get("name", "")
        weight = form.get("weight", "")
        if template is None or not name or any(c.isspace() for c in name + weight):
            return 400, {"ok": False, "error": f"expected action one of {', '.join(ACTIONS)}, a node name and, "
                                               f"for weight, a weight"}
        reply = await self.admin.execute(template.format(name=name, weight=weight), f"status page {peer}")
        return (200 if reply.get("ok") else 409), reply


def read_token(config) -> str:
    """status.token_file's content, stripped. Raises ConfigError."""
    path = config.resolve(config.status.token_file)
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config.source}: status.token_file: cannot read {path}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if len(token) < 16:
        raise ConfigError(f"{config.source}: status.token_file: {path} holds {len(token)} characters; expected a "
                          f"token of 16 or more (e.g. `openssl rand -hex 24`)")
    return token


def json_body(reply: dict) -> bytes:
    return json.dumps(reply).encode()
