"""Several lbs driven as one: the targets of `lb ctl` and `lb deploy` (issue 19).

A target is a local admin socket path or `ssh://[user@]host[:port]/path/to/lb.sock`. An ssh
target is reached by running `ssh -T -o BatchMode=yes [-p PORT] [user@]host lb ctl --stdio -s
PATH` (the user's own ssh config, keys and known_hosts apply; `--ssh-command` replaces `ssh`):
the remote `lb ctl --stdio` relays one command line to the socket and one JSON reply back. A
relay answers one command at a time, so an ssh target keeps a few relays and uses an idle one
or starts another (a deploy's `wait` on one node must not hold up another's commands).

`Fleet` sends each command to every lb at once. The pure functions below merge what they
answer: a node is in service only where it is in service on every lb (the worst row stands
for it), counters are summed, latencies are merged from the histograms' bucket counts
(`show latency ... raw`). `differences` lists what the lbs disagree on before a deploy.

An lb that does not answer for the retry window (`--lb-timeout`) is *lost*. While the deploy
goes forward a lost lb fails the step, at once and from then on; a rollback goes on with the
lbs that answer (`tolerate_lost`), and the report names the lost one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
from collections import Counter, deque
from dataclasses import dataclass

from ..core.errors import DeployError
from ..core.stats import bucket_quantiles, ms
from .client import MAX_REPLY_BYTES, RECONNECT_S, AdminClient, StepFailed, Unreachable
from .plan import in_service

SSH_URL = re.compile(r"^ssh://(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|"
                     r"\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?(?P<path>/[^\s]*)$")
RELAYS_KEPT = 8                 # idle ssh relays kept per target
STDERR_LINES = 5                # of an ssh relay's stderr, kept for the error message
RELAY_EXIT_S = 2.0              # for a relay to end once its stdin closed, before it is killed


@dataclass(frozen=True)
class Target:
    text: str                   # as given to -s
    path: str                   # the admin socket (on the remote host for ssh)
    host: str | None = None     # None: a local socket
    user: str | None = None
    port: int | None = None


def parse_target(text: str) -> Target:
    """A -s value. Raises DeployError naming it."""
    if not text.startswith("ssh://"):
        if "://" in text:
            raise DeployError(f"-s {text}: expected a socket path or ssh://[user@]host[:port]/path/to/lb.sock")
        return Target(text, text)
    match = SSH_URL.match(text)
    if not match or (match["port"] and not 0 < int(match["port"]) < 65536):
        raise DeployError(f"-s {text}: expected ssh://[user@]host[:port]/path/to/lb.sock")
    return Target(text, match["path"], match["host"].strip("[]"), match["user"],
                  int(match["port"]) if match["port"] else None)


def ssh_argv(target: Target, ssh_command: str = "ssh") -> list[str]:
    """The command that reaches `target`'s admin socket: `lb ctl --stdio` on its host."""
    argv = [*shlex.split(ssh_command), "-T", "-o", "BatchMode=yes"]
    if target.port:
        argv += ["-p", str(target.port)]
    argv.append(f"{target.user}@{target.host}" if target.user else target.host)
    argv.append(f"lb ctl --stdio -s {shlex.quote(target.path)}")     # ssh runs it through the remote shell
    return argv


class SshAdminClient(AdminClient):
    """AdminClient over `ssh ... lb ctl --stdio`; relays kept and reused, one command each at a time."""

    def __init__(self, target: Target, ssh_command: str = "ssh", reconnect_s: float = RECONNECT_S):
        super().__init__(target.text, reconnect_s)
        self.argv = ssh_argv(target, ssh_command)
        self.idle: list[asyncio.subprocess.Process] = []
        self.busy: set[asyncio.subprocess.Process] = set()

    async def _spawn(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=MAX_REPLY_BYTES, start_new_session=True)
        proc.stderr_tail = deque(maxlen=STDERR_LINES)

        async def keep_stderr():
            async for raw in proc.stderr:
                proc.stderr_tail.append(raw.decode("utf-8", "replace").rstrip())
        proc.stderr_task = asyncio.create_task(keep_stderr())
        return proc

    async def _once(self, line: str, timeout_s: float) -> dict:
        proc = self.idle.pop() if self.idle else await self._spawn()
        self.busy.add(proc)
        try:
            proc.stdin.write(line.encode() + b"\n")
            await proc.stdin.drain()
            raw = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
            if not raw:
                await asyncio.wait_for(proc.wait(), RELAY_EXIT_S)
                await asyncio.wait_for(asyncio.shield(proc.stderr_task), RELAY_EXIT_S)
                said = "; ".join(proc.stderr_tail) or "no output"
                raise EOFError(f"{' '.join(self.argv[:1])} exited with status {proc.returncode}: {said}")
            try:
                reply = json.loads(raw)
            except ValueError:
                raise EOFError(f"not a reply from lb ctl --stdio: {raw[:80]!r}") from None
        except BaseException:
            self.busy.discard(proc)
            await _end(proc)
            raise
        self.busy.discard(proc)
        if reply.get("unreachable"):             # the relay is fine; lb's socket is not
            self._keep(proc)
            raise ConnectionRefusedError(reply.get("error"))
        self._keep(proc)
        return reply

    def _keep(self, proc) -> None:
        if len(self.idle) < RELAYS_KEPT:
            self.idle.append(proc)
        else:
            asyncio.ensure_future(_end(proc))

    async def close(self) -> None:
        procs, self.idle = [*self.idle, *self.busy], []
        self.busy.clear()
        await asyncio.gather(*(_end(proc) for proc in procs))


async def _end(proc) -> None:
    """Close a relay's stdin (it ends at EOF); kill its session if it does not end."""
    if proc.returncode is None:
        try:
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), RELAY_EXIT_S)
        except (asyncio.TimeoutError, OSError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
    proc.stderr_task.cancel()


def make_client(target: Target, ssh_command: str, reconnect_s: float) -> AdminClient:
    if target.host is None:
        return AdminClient(target.path, reconnect_s)
    return SshAdminClient(target, ssh_command, reconnect_s)


# -- merging what the lbs answer (no I/O) -----------------------------------------------

def merge_servers(per_lb: dict[str, list[dict]]) -> list[dict]:
    """One row per node (the first lb's order): the row of an lb where it is not in service if
    there is one (a node is in service only where it is on every lb), and `on`: each lb's
    version, state and health of it."""
    merged = []
    first = next(iter(per_lb.values()), [])
    by_lb = {label: {s["name"]: s for s in servers} for label, servers in per_lb.items()}
    for row in first:
        name = row["name"]
        rows = {label: by_name[name] for label, by_name in by_lb.items() if name in by_name}
        worst = next((r for r in rows.values() if not in_service(r)), row)
        merged.append({**worst, "on": {label: {"version": r["version"], "state": r["state"], "health": r["health"]}
                                       for label, r in rows.items()}})
    return merged


def differences(per_lb: dict[str, list[dict]]) -> list[str]:
    """What the lbs disagree on (node names, addresses, versions), said per lb against the first."""
    labels = list(per_lb)
    if len(labels) < 2:
        return []
    reference, nodes = labels[0], {s["name"]: s for s in per_lb[labels[0]]}
    out = []
    for label in labels[1:]:
        theirs = {s["name"]: s for s in per_lb[label]}
        for name in nodes.keys() - theirs.keys():
            out.append(f"{label}: no node {name} ({reference} has it)")
        for name in theirs.keys() - nodes.keys():
            out.append(f"{label}: node {name} that {reference} does not have")
        for name in nodes.keys() & theirs.keys():
            for key in ("address", "version"):
                if nodes[name][key] != theirs[name][key]:
                    out.append(f"{label}: {name} {key} {theirs[name][key]} ({reference}: {nodes[name][key]})")
    return sorted(out)


def merge_stats(per_lb: dict[str, dict]) -> dict:
    """`show stats` of every lb -> per node requests and 5xx summed, lb-made failures summed by
    reason, and `since` (which changes when any lb restarted)."""
    servers: dict[str, dict] = {}
    failed: Counter = Counter()
    for stats in per_lb.values():
        for row in stats["servers"]:
            mine = servers.setdefault(row["name"], {"requests": 0, "5xx": 0})
            mine["requests"] += row["requests"]
            mine["5xx"] += row["5xx"]
        failed.update(stats["totals"]["failed"])
    return {"servers": servers, "failed": dict(failed),
            "since": " ".join(f"{label}={stats['totals']['since']}" for label, stats in per_lb.items())}


def merge_latency(per_lb: dict[str, dict]) -> tuple[int, float | None]:
    """`show latency NAMES WINDOW raw` of every lb -> (requests, p99 ms) of them all."""
    counts: Counter = Counter()
    for latency in per_lb.values():
        counts.update({int(bucket): count for bucket, count in latency["buckets"].items()})
    (p99,) = bucket_quantiles(counts, (0.99,))
    return sum(counts.values()), ms(p99)


# -- the fleet ------------------------------------------------------------------------------

class Member:
    def __init__(self, target: Target, client: AdminClient, label: str | None = None):
        self.target, self.client = target, client
        self.label = label or target.text     # a cluster member: its id in etcd
        self.lost: str | None = None          # why it stopped answering


class Fleet:
    """Every command to every lb at once. One target is a fleet of one."""

    def __init__(self, targets: list[str], ssh_command: str = "ssh", reconnect_s: float = RECONNECT_S):
        parsed = [parse_target(text) for text in targets]
        if len({t.text for t in parsed}) < len(parsed):
            raise DeployError("-s: the same lb is given twice")
        self.members = [Member(t, make_client(t, ssh_command, reconnect_s)) for t in parsed]
        self.tolerate_lost = False
        self.last_seen: dict[str, dict[str, dict]] = {}     # label -> node -> its version/state/health there
        self.left: dict[str, str] = {}        # label -> why it left the fleet (a cluster's member whose key went)

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.members]

    @property
    def targets(self) -> list[str]:
        """What names this fleet in the deploy's state file, for --resume to give again."""
        return self.labels

    def report_to(self, notify) -> None:
        """`notify(kind, fields)` hears of the fleet's own events (a cluster's members leaving,
        joining); a fleet of -s targets has none."""

    @property
    def flags(self) -> str:
        """The -s options that name this fleet, for a command line a person may copy."""
        return " ".join(f"-s {shlex.quote(label)}" for label in self.labels)

    @property
    def lost(self) -> dict[str, str]:
        return {m.label: m.lost for m in self.members if m.lost}

    def set_reconnect(self, seconds: float) -> None:
        for member in self.members:
            member.client.reconnect_s = seconds

    async def call(self, line: str, timeout_s: float = 30.0) -> dict[str, dict]:
        """Each answering lb's reply, by label. Raises Unreachable naming an lb that does not
        answer (and, going forward, at once for one lost before)."""
        self.refuse_if_lost()
        live = [m for m in self.members if not m.lost]
        results = await asyncio.gather(*(m.client.call(line, timeout_s) for m in live), return_exceptions=True)
        return self.collect(live, results)

    def refuse_if_lost(self) -> None:
        """Going forward, an lb lost before fails every command. Raises Unreachable."""
        if not self.tolerate_lost and self.lost:
            label, why = next(iter(self.lost.items()))
            raise Unreachable(f"lb {label} stopped answering: {why}")

    def collect(self, live: list[Member], results: list) -> dict[str, dict]:
        """The replies by label from what each member's call gave (None: it left the fleet
        meanwhile); a member that did not answer is lost. Raises Unreachable as call() does."""
        replies, unreachable = {}, None
        for member, result in zip(live, results):
            if result is None:
                continue
            if isinstance(result, Unreachable):
                member.lost = result.message
                unreachable = unreachable or result
            elif isinstance(result, BaseException):
                raise result
            else:
                replies[member.label] = result
        if unreachable is not None and not self.tolerate_lost:
            raise unreachable
        if not replies:
            raise Unreachable("no lb of the fleet answers: " + "; ".join(self.lost.values()))
        return replies

    async def ok(self, line: str, timeout_s: float = 30.0) -> dict[str, dict]:
        """The replies of a command that must succeed on every lb. Raises StepFailed naming
        the lbs that refused it."""
        replies = await self.call(line, timeout_s)
        refused = [(label, reply) for label, reply in replies.items() if not reply.get("ok")]
        if refused:
            named = len(self.members) > 1
            raise StepFailed("; ".join(f"{'lb ' + label + ' ' if named else 'lb '}refused '{line}': "
                                       f"{reply.get('error')}" for label, reply in refused))
        return replies

    async def per_lb_servers(self) -> dict[str, list[dict]]:
        per_lb = {label: reply["servers"] for label, reply in (await self.ok("show servers")).items()}
        for label, servers in per_lb.items():
            self.last_seen[label] = {s["name"]: {"version": s["version"], "state": s["state"],
                                                 "health": s["health"]} for s in servers}
        return per_lb

    async def servers(self) -> list[dict]:
        return merge_servers(await self.per_lb_servers())

    async def stats(self) -> dict:
        return merge_stats({label: reply["stats"] for label, reply in (await self.ok("show stats")).items()})

    async def latency(self, names: list[str], window_s: int) -> tuple[int, float | None]:
        replies = await self.ok(f"show latency {','.join(names)} {window_s} raw")
        return merge_latency({label: reply["latency"] for label, reply in replies.items()})

    async def close(self) -> None:
        await asyncio.gather(*(m.client.close() for m in self.members))
