"""`lb deploy` in action: admin commands, update commands, bakes, rollback, the state file.

The decisions (plan, steps, verdicts) are in plan.py; this layer runs them,
and view.py shows them. Admin commands go to every lb of the fleet (fleet.py: one
or more targets, local or over ssh; cluster.py: the members etcd lists) through
client.py (a connection per command, retried while lb restarts).
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time

from ..core.values import parse_hostport
from ..core.errors import DeployError
from ..core.stats import iso_utc
from .client import RECONNECT_S, StepFailed, Unreachable
from .commands import run_command
from .report import report
from .configsync import check_editable
from .cluster import ClusterFleet
from .progress import Reporting
from .fleet import Fleet, differences, merge_servers
from .bakegates import BakeGates
from .gates import FAIL, PASS
from .plan import (EXIT_DONE, EXIT_INTERRUPTED, EXIT_ROLLED_BACK, EXIT_STUCK, EXIT_USAGE, UNFINISHED, Batch,
                   DeployState, NodeProgress, Options, Sample, check_servers, command_env, fill, fit, in_service,
                   evidence, judge, lb_made_failures, plan, verify_env, verify_setup)
from .statefile import load_deploy_state, save_deploy_state

REPLY_SLACK_S = 15.0        # beyond a `wait`'s own timeout, before its reply counts as lost
WATCH_INTERVAL_S = 0.5
WARN = "warn"


class Deployer:
    def __init__(self, opts: Options, admin: Fleet, view, state_path: str, log_path: str):
        self.opts = opts
        self.admin = admin
        self.view = view
        self.state_path = state_path
        self.log = open(log_path, "a", encoding="utf-8")
        self.log_path = log_path
        self.state: DeployState | None = None
        self.expect_to = opts.to if opts else None       # --resume checks it against the state file
        self.stopping = False
        self.main_task: asyncio.Task | None = None
        self.batch_failed = False
        self.timings: dict[str, dict[str, float]] = {}
        self.started = time.monotonic()
        self.write_config: str | None = None   # --write-config: the lb config file to put the versions in
        self._gates: BakeGates | None = None

    @property
    def gates(self) -> BakeGates:
        """The checks and gates, once the options are known (--resume reads them from the state)."""
        if self._gates is None:
            self._gates = BakeGates(self.opts, self.log, lambda name: self.values(name, "forward"),
                                    lambda name: self.state.old_versions[name], self.view_event, self.save)
        return self._gates

    # -- start ---------------------------------------------------------------------
    async def prepare(self, resume: bool) -> tuple[list[Batch], list[str], list[str]]:
        """Load or make the plan: its batches, notes and warnings. Raises DeployError (exit 2)."""
        per_lb = await self.admin.per_lb_servers()
        disagree = differences(per_lb)
        if disagree:
            raise DeployError(f"the {len(per_lb)} lbs do not agree on the nodes; nothing was done:\n  "
                              + "\n  ".join(disagree))
        servers = merge_servers(per_lb)
        check_servers(servers)
        fleet_notes = [f"fleet of {len(per_lb)} lbs, agreeing on {len(servers)} nodes: "
                       + ", ".join(per_lb)] if len(per_lb) > 1 else []
        saved = load_deploy_state(self.state_path)
        if resume:
            if saved is None:
                raise DeployError(f"--resume: no deploy state in {self.state_path}")
            if saved.phase not in UNFINISHED:
                raise DeployError(f"--resume: the deploy in {self.state_path} has ended ({saved.phase}); "
                                  f"nothing to resume")
            if self.expect_to and self.expect_to != saved.options["to"]:
                raise DeployError(f"--resume: {self.state_path} is a deploy to {saved.options['to']}, "
                                  f"not {self.expect_to}")
            if saved.targets and sorted(saved.targets) != sorted(self.admin.targets):
                raise DeployError(f"--resume: the deploy in {self.state_path} drives "
                                  f"{' '.join(saved.targets)}, not {' '.join(self.admin.targets)}: "
                                  f"resume it with the same -s targets (or --cluster)")
            saved.interrupted = False
            self.state, self.opts = saved, Options(**saved.options)
            return saved.batches, [f"resuming the deploy to {self.opts.to} recorded in {self.state_path} "
                                   f"with its options", *fleet_notes], await self.look_at_lb_for_verify()
        if saved is not None and saved.phase in UNFINISHED:
            raise DeployError(f"an unfinished deploy to {saved.options['to']} ({saved.phase}) is recorded in "
                              f"{self.state_path}: finish it with --resume, or remove the file")
        warnings = await self.look_at_lb_for_verify()
        batches, notes = plan(servers, self.opts)
        self.state = DeployState(
            options=self.opts.to_dict(), batches=batches,
            old_versions={s["name"]: s["version"] for s in servers},
            addresses={s["name"]: parse_hostport(s["address"]) for s in servers}, targets=self.admin.targets,
            weights={s["name"]: s["weight"] for s in servers})
        return batches, [*notes, *fleet_notes], warnings

    async def look_at_lb_for_verify(self) -> list[str]:
        """With --verify: the first lb's `show info` fills in LB_URL and the version header where
        not given, and says what to warn of (plan.verify_setup). Raises DeployError."""
        if not self.opts.verify:
            return []
        first = self.admin.members[0]
        info = (await self.admin.ok("show info"))[first.label]
        self.opts, warnings = verify_setup(info, first.target.host, self.opts)
        return warnings

    def show_plan(self, batches: list[Batch], notes: list[str], warnings: list[str], dry_run: bool) -> None:
        """The plan to the view, and to the deploy log (its notes and warnings with it)."""
        self._log("plan", {"batches": [list(b.nodes) for b in batches], "notes": notes, "warnings": warnings})
        self.view.plan(batches, notes, dry_run, warnings)

    async def run(self) -> int:
        state = self.state
        self._event("start", to=self.opts.to, phase=state.phase, batches=len(state.batches),
                    log=self.log_path, state_file=self.state_path)
        if state.phase == "deploy":
            await self.admin.ok(f"set target {self.opts.to}")
            failure = await self.deploy()
            if self.stopping and failure is None:
                return self.interrupted()
            if failure is None:
                state.phase = "done"
                self.save()
                return EXIT_DONE
            state.failure, state.phase = failure, "rollback"
            self.save()
            self._event("failed", **failure)
        return await self.rollback()

    # -- forward ---------------------------------------------------------------------
    async def deploy(self) -> dict | None:
        state = self.state
        while state.batch < len(state.batches) and not self.stopping:
            batch = state.batches[state.batch]
            if not any(state.node(n).done or state.node(n).running for n in batch.nodes):
                batch = await self.fit_batch(state.batch)
                if isinstance(batch, dict):
                    return batch
            self._event("batch", index=state.batch + 1, of=len(state.batches), nodes=list(batch.nodes),
                        canary=batch.canary)
            self.gates.begin(state.bakes, state.batch + 1, batch)
            try:
                before = await self.snapshot()
                failure = await self.walk_all(batch.nodes, "forward") or await self.bake(batch, before)
            except (StepFailed, Unreachable) as exc:      # reading stats failed: judge nothing blind
                failure = {"node": ",".join(batch.nodes), "step": "bake", "reason": str(exc)}
            if failure or self.stopping:
                return failure
            state.baked.extend(batch.nodes)
            state.batch += 1
            self.save()
        return None

    async def fit_batch(self, index: int) -> Batch | dict:
        """The batch shrunk to what --min-ready allows now (the rest becomes the next batch);
        waits up to --health-timeout for capacity. A failure dict when there is none."""
        batch = self.state.batches[index]
        deadline = time.monotonic() + self.opts.health_timeout_s
        while True:
            servers = await self.admin.servers()
            try:
                taken = fit(list(batch.nodes), servers, len(batch.nodes), self.opts.min_ready_fraction)
                break
            except DeployError as exc:
                if time.monotonic() > deadline or self.stopping:
                    return {"node": batch.nodes[0], "step": "min-ready", "reason": exc.message}
                await asyncio.sleep(1.0)
        if len(taken) < len(batch.nodes):
            rest = Batch(batch.nodes[len(taken):], batch.canary)
            batch = Batch(tuple(taken), batch.canary)
            self.state.batches[index:index + 1] = [batch, rest]
            self._event("replan", reason="--min-ready", batches=[list(b.nodes) for b in self.state.batches])
            self.save()
        return batch

    async def walk_all(self, names, direction: str) -> dict | None:
        self.batch_failed = False
        results = await asyncio.gather(*(self.walk(name, direction) for name in names))
        failures = [r for r in results if r]
        if failures:
            first = dict(failures[0])
            if len(failures) > 1:
                first["also"] = failures[1:]
            return first
        return None

    async def walk(self, name: str, direction: str) -> dict | None:
        """Run the node's steps from where it is; a failure dict, or None."""
        progress = self.state.node(name)
        if progress.direction != direction:
            progress.direction, progress.done, progress.running = direction, 0, False
        while not progress.finished:
            if self.stopping or (self.batch_failed and direction == "forward"):
                return None
            step = progress.next_step
            if step.name == "verify" and not self.opts.verify:
                progress.done += 1           # no --verify: the step is passed over without a word
                self.save()
                continue
            progress.running = True
            self.save()
            self._event("step", node=name, step=step.name, direction=direction, status="start")
            started = time.monotonic()
            try:
                await self.do_step(name, step, direction)
            except StepFailed as exc:
                # a refused admin command changed nothing; a failed shell command may have
                # done half its work, so the step stays "started" (a rollback then restores)
                progress.running = step.admin is None
                progress.error = f"{step.name}: {exc.reason}"
                self.save()
                self.batch_failed = True
                self._event("step", node=name, step=step.name, direction=direction, status="failed",
                            reason=exc.reason, output=exc.output[-5:])
                failure = {"node": name, "step": step.name, "reason": exc.reason, "output": exc.output}
                if step.name == "verify":
                    failure["gate"] = self.gates.current["gates"][f"verify {name}"]
                return failure
            took = time.monotonic() - started
            if direction == "forward":
                self.timings.setdefault(name, {})[step.name] = round(took, 2)
            progress.done, progress.running, progress.error = progress.done + 1, False, None
            self.save()
            self._event("step", node=name, step=step.name, direction=direction, status="ok",
                        seconds=round(took, 2))
        return None

    async def do_step(self, name: str, step, direction: str) -> None:
        values = self.values(name, direction)
        timeout_s = getattr(self.opts, step.timeout) if step.timeout else 30.0
        if step.name == "verify":
            await self.verify(name, values)
            return
        if step.admin is None:
            command = fill(self.opts.command(direction), values)
            self.log.write(f"{iso_utc(time.time())} {name} $ {command}\n")
            await run_command(command, command_env(values), timeout_s, self.log, name)
            return
        line = step.admin.format(name=name, version=values["version"], timeout=f"{timeout_s:g}")
        # A fleet puts a node back at weight 0, and gives it its weight once it is up on every lb:
        # otherwise the lb whose health checks pass first sends new users to the new version while
        # another lb has none of it yet, and a user who goes there with the new pin is sent back
        # (tests/e2e/test_fleet.py saw it). What is left is the gap between the lbs' replies to
        # `set weight`, milliseconds, instead of a health check interval or more.
        # --verify holds the node at weight 0 too, from `ready` to the end of `verify`: up, and
        # reachable only by a request that names its version and may override (skew.override_from)
        # or by the node's own address, so the smoke test runs before any user meets it. Before
        # `ready` it could not: a drained node is not checked into `up`, and lb routes nothing to it.
        fleet = len(self.admin.members) > 1
        verifying = bool(self.opts.verify)
        hold = fleet or (verifying and direction == "forward")
        give_back = step.name == "wait up" and (fleet or verifying) and not (verifying and direction == "forward")
        try:
            if hold and step.name == "ready":
                await self.admin.ok(f"set weight {name} 0")
            replies = await self.admin.ok(line, timeout_s + REPLY_SLACK_S)
            if step.name == "wait up":
                check_label(name, values["version"], replies)
            if give_back:
                await self.give_weight_back(name)
        except Unreachable as exc:
            raise StepFailed(exc.message) from None

    async def give_weight_back(self, name: str) -> None:
        await self.admin.ok(f"set weight {name} {self.state.weights.get(name, 1)}")

    async def verify(self, name: str, values: dict) -> None:
        """--verify on a node up at weight 0; then its weight back. Raises StepFailed, as a failed
        health check does: the batch fails and the rollback rules apply."""
        command = fill(self.opts.verify, values)
        self.log.write(f"{iso_utc(time.time())} {name} verify $ {command}\n")
        try:
            await run_command(command, verify_env(values, self.opts), self.opts.verify_timeout_s, self.log,
                              f"{name} verify", "--verify-timeout")
        except StepFailed as exc:
            self.gates.record("verify", name, FAIL, exc.reason, node=name, output=exc.output[-5:])
            raise
        self.gates.record("verify", name, PASS, "exited with status 0", node=name)
        try:
            await self.give_weight_back(name)
        except Unreachable as exc:
            raise StepFailed(exc.message) from None

    def values(self, name: str, direction: str) -> dict:
        old = self.state.old_versions[name]
        host, port = self.state.addresses[name]
        new, previous = (self.opts.to, old) if direction == "forward" else (old, self.opts.to)
        return {"name": name, "host": host, "port": port, "version": new, "old_version": previous}

    # -- bake ----------------------------------------------------------------------------
    async def bake(self, batch: Batch, batch_before: dict) -> dict | None:
        bake_s = self.opts.canary_bake_s if batch.canary else self.opts.bake_s
        limit_s = self.opts.bake_limit_s(bake_s)
        self._event("bake", nodes=list(batch.nodes), seconds=bake_s, canary=batch.canary,
                    min_requests=self.opts.min_requests, max_seconds=limit_s)
        self.gates.new_bake()
        while True:
            before = await self.snapshot()
            failure, thin = await self.watch_bake(batch, before, bake_s, limit_s)
            if failure or self.stopping:
                return failure
            after = await self.snapshot()
            if not restarted(before, after):
                break
            # lb restarted during the bake: its counters began again, so bake again
            self._event("bake", nodes=list(batch.nodes), seconds=bake_s, canary=batch.canary,
                        min_requests=self.opts.min_requests, max_seconds=limit_s,
                        note="lb restarted during the bake; baking again")
        if restarted(batch_before, after):
            batch_before = {"failed": {}}         # counted since lb's restart
        servers = await self.admin.servers()
        group = await self.sample(list(batch.nodes), before, after, self.opts.to)
        baseline = await self.baseline(servers, batch, before, after)
        verdict = judge(group, baseline, lb_made_failures(batch_before["failed"], after["failed"]), self.opts)
        reasons, warnings = list(verdict.reasons), []
        outcome, detail = evidence(group.requests, after["at"] - before["at"], limit_s, self.opts)
        (warnings if outcome == WARN else reasons if outcome == FAIL else []).append(detail)
        entry = self.gates.record("evidence", "min-requests", outcome, detail, requests=group.requests)
        self.gates.current.update(requests=group.requests, seconds=round(after["at"] - before["at"], 1),
                                  ok=not reasons, thin=thin, warnings=warnings)
        self.save()
        self._event("baked", nodes=list(batch.nodes), ok=not reasons, reasons=reasons, warnings=warnings,
                    **verdict.numbers)
        if not reasons:
            return None
        failure = {"node": ",".join(batch.nodes), "step": "bake", "reason": "; ".join(reasons),
                   "numbers": verdict.numbers}
        if outcome == FAIL and not verdict.reasons:
            failure["gate"] = entry
        return failure

    async def watch_bake(self, batch: Batch, before: dict, bake_s: float, limit_s: float) -> tuple[dict | None, bool]:
        """Wait out the bake, running the checks and gates at its start, every --check-interval and
        at its end; past `bake_s`, go on until the batch has served --min-requests, up to `limit_s`.
        (a failure or None, whether the bake ended thin). A failure as soon as a batch node leaves
        service or a check or gate fails."""
        deadline, limit = before["at"] + bake_s, before["at"] + limit_s
        failure = await self.gates.run(batch, "start")
        next_check, extended = time.monotonic() + self.opts.check_interval_s, False
        while failure is None and not self.stopping:
            now = time.monotonic()
            if now >= deadline:
                served = await self.served(batch, before)
                if served >= self.opts.min_requests or now >= limit:
                    failure = await self.gates.run(batch, "end", True, lambda: self.stopping)
                    return failure, served < self.opts.min_requests
                if not extended:
                    extended = True
                    self._event("bake_extended", nodes=list(batch.nodes), requests=served,
                                min_requests=self.opts.min_requests, max_seconds=limit_s)
            wake = min(deadline if now < deadline else limit, next_check)
            await asyncio.sleep(min(WATCH_INTERVAL_S, max(wake - now, 0)))
            servers = await self.admin.servers()
            gone = [s for s in servers if s["name"] in batch.nodes and not in_service(s)]
            if gone:
                s = gone[0]
                return {"node": s["name"], "step": "bake",
                        "reason": f"left service during the bake: {s['state']}/{s['health']}"}, False
            if time.monotonic() >= next_check:
                failure = await self.gates.run(batch, "interval")
                next_check = time.monotonic() + self.opts.check_interval_s
        return failure, False

    async def served(self, batch: Batch, before: dict) -> int:
        """Requests the batch's nodes served since `before`."""
        now = await self.snapshot()
        return sum(max(now["servers"].get(n, {}).get("requests", 0) - before["servers"].get(n, {}).get("requests", 0),
                       0) for n in batch.nodes)

    async def baseline(self, servers, batch, before, after) -> Sample | None:
        """The old-version nodes in service; when none is left, the nodes updated before."""
        others = [s for s in servers if s["name"] not in batch.nodes and in_service(s)
                  and s["name"] in before["servers"]]
        old = [s["name"] for s in others if s["version"] != self.opts.to]
        new = [s["name"] for s in others if s["version"] == self.opts.to]
        if old:
            label = "/".join(sorted({s["version"] for s in others if s["name"] in old}))
            return await self.sample(old, before, after, label)
        if new:
            return await self.sample(new, before, after, f"{self.opts.to} (earlier batches)")
        return None

    async def snapshot(self) -> dict:
        """Per node requests and 5xx, lb-made failures and since: summed over the fleet."""
        return {"at": time.monotonic(), **await self.admin.stats()}

    async def sample(self, names: list[str], before: dict, after: dict, label: str) -> Sample:
        def delta(key: str) -> int:       # never below 0: lb may have restarted in between
            return sum(max(after["servers"][n][key] - before["servers"].get(n, {}).get(key, 0), 0)
                       for n in names)

        window_s = min(max(math.ceil(after["at"] - before["at"]), 1), 60)
        latency_requests, p99_ms = await self.admin.latency(names, window_s)     # merged over the fleet
        return Sample(delta("requests"), delta("5xx"), p99_ms, latency_requests, label)

    # -- back --------------------------------------------------------------------------
    async def rollback(self) -> int:
        state = self.state
        self.admin.tolerate_lost = True          # an lb that stopped answering: the others roll back
        self._event("rollback", failed_batch=state.batch + 1 if state.batch < len(state.batches) else None,
                    finished_batches=state.batch if self.opts.rollback_done else 0)
        try:
            for group in self.restore_groups():
                if self.stopping:
                    return self.interrupted()
                for sub in await self.restore_fits(group):
                    await self.restore(sub)
        except (StepFailed, Unreachable) as exc:
            self._event("rollback_error", reason=str(exc))
        if self.stopping:
            return self.interrupted()
        left = [n for n, p in state.progress.items() if self.needs_restore(n, p)]
        state.phase = "stuck" if left else "rolled_back"
        self.save()
        return EXIT_STUCK if left else EXIT_ROLLED_BACK

    def restore_groups(self) -> list[list[str]]:
        """The failed batch first, then (with rollback of finished batches) the others, newest first."""
        state = self.state
        last = min(state.batch, len(state.batches) - 1)
        indexes = range(last, -1, -1) if self.opts.rollback_done else [last]
        groups = []
        for index in indexes:
            names = [n for n in state.batches[index].nodes if self.needs_restore(n, state.node(n))]
            if names:
                groups.append(names)
        return groups

    def needs_restore(self, name: str, progress: NodeProgress) -> bool:
        if name in self.state.baked and not self.opts.rollback_done:
            return False
        return not (progress.direction == "back" and progress.finished) and progress.restore_plan() != "none"

    async def restore_fits(self, names: list[str]) -> list[list[str]]:
        """Split a group so that taking it out keeps --min-ready (out-of-service nodes cost nothing)."""
        groups = []
        while names:
            servers = await self.admin.servers()
            try:
                taken = fit(names, servers, len(names), self.opts.min_ready_fraction)
            except DeployError:
                taken = names[:1]        # restoring one node at a time is all a rollback can do
            groups.append(taken)
            names = names[len(taken):]
        return groups

    async def restore(self, names: list[str]) -> None:
        for name in names:
            progress = self.state.node(name)
            if progress.direction == "forward" and progress.restore_plan() == "ready":
                progress.restart_at_ready()
        await self.walk_all(names, "back")

    # -- bookkeeping ---------------------------------------------------------------------
    def interrupt(self) -> None:
        if self.stopping and self.main_task is not None:
            self.main_task.cancel()          # a second Ctrl-C: stop now; the step in progress is redone on resume
            return
        self.stopping = True
        self._event("stopping", message="stopping after the current step (Ctrl-C again to stop now)")

    def interrupted(self) -> int:
        self.state.interrupted = True
        self.save()
        self._event("interrupted", resume=f"lb deploy {self.admin.flags} --state {self.state_path} --resume")
        return EXIT_INTERRUPTED

    def save(self) -> None:
        save_deploy_state(self.state_path, self.state)

    def view_event(self, kind: str, fields: dict) -> None:
        self._event(kind, **fields)

    def _event(self, kind: str, /, **fields) -> None:
        self._log(kind, fields)
        self.view.event(kind, fields)

    def _log(self, kind: str, fields: dict) -> None:
        self.log.write(f"{iso_utc(time.time())} {kind} {json.dumps(fields)}\n")
        self.log.flush()

    async def watch(self) -> None:
        """Per-version request rate, 5xx rate and p99 for the live view, every second or so."""
        previous = None
        while True:
            try:
                servers = await self.admin.servers()
                snap = await self.snapshot()
                if previous is not None:
                    self.view.stats(await self.version_rows(servers, previous, snap))
                previous = snap
            except (DeployError, StepFailed):
                pass
            await asyncio.sleep(self.view.stats_interval_s)

    async def version_rows(self, servers, before, after) -> list[dict]:
        seconds = max(after["at"] - before["at"], 1e-3)
        rows = []
        for version in sorted({s["version"] for s in servers}, key=lambda v: (v == self.opts.to, v)):
            names = [s["name"] for s in servers if s["version"] == version]
            sample = await self.sample(names, before, after, version)
            rows.append({"version": version, "nodes": len(names),
                         "in_service": sum(in_service(s) for s in servers if s["version"] == version),
                         "rps": round(sample.requests / seconds, 1),
                         "error_rate": round(sample.error_rate, 4), "p99_ms": sample.p99_ms})
        return rows


def check_label(name: str, version: str, replies: dict[str, dict]) -> None:
    """After `wait up`, the node must still carry the label the deploy gave it: lb adopts what a
    node reports only when nothing else would serve (lb/core/health.py), and then the node is
    up on another version. Raises StepFailed."""
    for label, reply in replies.items():
        got = reply.get("server", {}).get("version", version)
        if got != version:
            raise StepFailed(f"{name} is up but runs {got}, not {version} (lb {label} relabelled it from its "
                             f"health check: the update did not put {version} on it)")


def restarted(before: dict, after: dict) -> bool:
    """Whether lb restarted between two snapshots (its counters began again)."""
    return after["since"] != before["since"] or any(
        row["requests"] < before["servers"].get(name, {}).get("requests", 0)
        for name, row in after["servers"].items())


# -- the command ------------------------------------------------------------------------

async def deploy_command(opts: Options | None, targets: list[str], state_path: str, log_path: str,
                         view, resume: bool, dry_run: bool, expect_to: str | None = None,
                         ssh_command: str = "ssh", lb_timeout_s: float = RECONNECT_S,
                         write_config: str | None = None, cluster: str | None = None, etcd_tls=None) -> int:
    try:
        if write_config is not None:
            check_editable(write_config)                          # before anything changes
        # at start, an unreachable lb (or etcd, with --cluster) means exit 2
        admin = Fleet(targets, ssh_command, reconnect_s=1.0) if cluster is None else \
            await ClusterFleet.open(cluster, ssh_command, etcd_tls)
    except DeployError as exc:
        view.error(exc.message)
        return EXIT_USAGE
    try:
        return await _deploy(admin, opts, state_path, log_path, view, resume, dry_run, expect_to, lb_timeout_s,
                             write_config)
    finally:
        await admin.close()


async def _deploy(admin: Fleet, opts, state_path, log_path, view, resume, dry_run, expect_to,
                  lb_timeout_s: float, write_config: str | None) -> int:
    view = Reporting(view, admin, opts.to if opts is not None else expect_to)   # the lbs' status page hears it
    deployer = Deployer(opts, admin, view, state_path, log_path)
    deployer.write_config = write_config
    deployer.expect_to = expect_to or deployer.expect_to
    admin.report_to(deployer.view_event)          # a cluster's members leaving and joining
    try:
        batches, notes, warnings = await deployer.prepare(resume)
    except DeployError as exc:
        view.error(exc.message)
        return EXIT_USAGE
    deployer.show_plan(batches, notes, warnings, dry_run)
    if dry_run:
        return EXIT_DONE
    admin.set_reconnect(lb_timeout_s)
    loop = asyncio.get_running_loop()
    deployer.main_task = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, deployer.interrupt)
    watcher = asyncio.create_task(deployer.watch())
    try:
        code = await deployer.run()
    except asyncio.CancelledError:
        asyncio.current_task().uncancel()
        code = deployer.interrupted()
    except (DeployError, StepFailed) as exc:     # lb unreachable for longer than --lb-timeout
        deployer.state.failure = {"node": "-", "step": "admin", "reason": str(exc)}
        deployer.state.phase = "stuck"
        deployer.save()
        code = EXIT_STUCK
    finally:
        watcher.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    view.summary(await report(deployer, code))
    await view.flush()
    view.close()
    deployer.log.close()
    return code
