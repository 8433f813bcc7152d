"""A bake's gates in action: the --check commands and the Prometheus --gates, run at the start
of every bake, every --check-interval and at its end, and the record of every gate's outcome
(--verify's and the evidence's too): one JSON event each for the log and the live view, the
last one per gate in the batch's entry of the deploy state (`bakes`), for --resume and the
report. run.py's bake decides when; this module runs them and says whether the batch fails.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from ..core.stats import iso_utc
from .client import StepFailed
from .commands import run_command
from .gates import FAIL, PASS, GateRunner, parse_gates
from .plan import Batch, Options, command_env, fill

GATE_RETRY_S = 2.0          # at most, between a bake's last tries of an inconclusive gate


class BakeGates:
    """`values(name)`: a node's placeholders (forward); `old_version(name)`; `emit(kind, fields)`:
    an event to the log and the view; `save()`: write the deploy state."""

    def __init__(self, opts: Options, log, values: Callable, old_version: Callable, emit: Callable,
                 save: Callable):
        self.opts, self.log = opts, log
        self.values, self.old_version, self.emit, self.save = values, old_version, emit, save
        self.runner = GateRunner(opts.prometheus, parse_gates(opts.gates), opts.gate_tries) if opts.gates else None
        self.current: dict | None = None          # the batch in progress's record in the state's `bakes`

    def begin(self, bakes: list[dict], index: int, batch: Batch) -> dict:
        """The batch's record (made, or found again on --resume): its gates' last outcomes and,
        once baked, the requests its bake judged."""
        record = next((b for b in bakes if b["batch"] == index), None)
        if record is None:
            record = {"batch": index, "nodes": list(batch.nodes), "canary": batch.canary, "gates": {},
                      "requests": None, "ok": None}
            bakes.append(record)
        record["nodes"] = list(batch.nodes)          # --min-ready may have shrunk it
        self.current = record
        return record

    def new_bake(self) -> None:
        """A bake begins: inconclusive answers from an earlier one do not count against it."""
        if self.runner is not None:
            self.runner.reset()

    def record(self, kind: str, name: str, outcome: str, detail: str, **extra) -> dict:
        """A gate's outcome (kind: verify, check, gate, evidence): kept as the gate's last one for
        the batch, and sent as a `gate` event."""
        entry = {"kind": kind, "name": name, "outcome": outcome, "detail": detail, **extra,
                 "t": iso_utc(time.time())}
        if self.current is not None:
            self.current["gates"][f"{kind} {name}"] = entry
            self.save()
        self.emit("gate", {"batch": self.current["batch"] if self.current else None, **entry})
        return entry

    async def run(self, batch: Batch, when: str, final: bool = False, stopping: Callable = lambda: False) -> dict | None:
        """The --check commands, then (but at the bake's start, when the new version has no data
        yet: a rate over it is empty) the Prometheus --gates: a failure dict, or None."""
        failure = await self.run_checks(batch, when)
        if failure is None and when != "start":
            failure = await self.run_prometheus(batch, when, final, stopping)
        return failure

    # -- --check ------------------------------------------------------------------------
    async def run_checks(self, batch: Batch, when: str) -> dict | None:
        """Every --check once per node of the batch, all at once (a check reads the node's
        {host} or $LB_HOST; one that reads something shared runs once a node, harmlessly)."""
        jobs = [(index, check, name) for index, check in enumerate(self.opts.checks, 1) for name in batch.nodes]
        if not jobs:
            return None
        results = await asyncio.gather(*(self.run_check(index, check, name, batch.nodes)
                                         for index, check, name in jobs))
        for (index, check, _name), result in zip(jobs, results):
            if result is None:
                self.record("check", f"#{index}", PASS, "exited with status 0", command=check, when=when)
        failed = next((r for r in results if r), None)
        if failed is None:
            return None
        entry = self.record("check", failed["check"], FAIL, failed["reason"], command=failed["command"],
                            node=failed["node"], output=failed["output"][-5:], when=when)
        return {"node": failed["node"], "step": "check",
                "reason": f"--check {failed['check']} ({failed['command']}) on {failed['node']} {failed['reason']}",
                "output": failed["output"], "gate": entry}

    async def run_check(self, index: int, check: str, name: str, nodes) -> dict | None:
        values = self.values(name)
        command = fill(check, values)
        self.log.write(f"{iso_utc(time.time())} {name} check #{index} $ {command}\n")
        env = {**command_env(values), "LB_NODES": " ".join(nodes)}
        try:
            await run_command(command, env, self.opts.check_timeout_s, self.log, f"{name} check #{index}",
                              "--check-timeout")
        except StepFailed as exc:
            return {"check": f"#{index}", "command": check, "node": name, "reason": exc.reason, "output": exc.output}
        return None

    # -- --gate -------------------------------------------------------------------------
    async def run_prometheus(self, batch: Batch, when: str, final: bool, stopping: Callable) -> dict | None:
        """The gates, once; at the bake's end an inconclusive gate is asked again (up to
        --gate-tries in a row) until it says pass or fail."""
        runner = self.runner
        if runner is None:
            return None
        old = self.old_version(batch.nodes[0])
        while True:
            results = await runner.evaluate(self.opts.to, old, batch.nodes)
            entries = {r.name: self.record("gate", r.name, r.outcome, r.detail, value=r.to_dict()["value"],
                                           query=r.query, streak=runner.streak[r.name], when=when)
                       for r in results}
            failed = runner.failure(results)
            if failed is not None:
                why = (f"inconclusive {runner.streak[failed.name]} times in a row (--gate-tries {runner.tries}): "
                       if failed.outcome != FAIL else "")
                return {"node": ",".join(batch.nodes), "step": "gate",
                        "reason": f"--gate {failed.name}: {why}{failed.detail}", "query": failed.query,
                        "gate": entries[failed.name]}
            if not (final and runner.pending(results)) or stopping():
                return None
            await asyncio.sleep(min(self.opts.check_interval_s, GATE_RETRY_S))
