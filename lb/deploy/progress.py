"""A deploy's progress, told to the lbs for their status page (lb/core/statusview.py).

`Progress` follows the deploy's events (the ones its live view draws) into a small record:
the target version, the plan (its batches' nodes), the phase, the batch (index, of, nodes,
canary), each node's last step,
when the bake ends (epoch seconds: the page counts down), the gates' verdicts, and at the end
the result. `Reporting` is the deploy's view with that added: it passes everything on to the
real view and, at most every `SEND_INTERVAL_S`, sends the record to every lb as
`note deploy JSON` (one line: the JSON's spaces are written as \\u0020). A note is a courtesy:
one that fails is dropped, never a reason for the deploy to stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time

SEND_INTERVAL_S = 0.5
MAX_GATES = 12                  # verdicts kept (the latest): the note fits an admin line
MAX_LINE_CHARS = 4000           # the whole line, under the admin socket's 4096 bytes (ASCII: a char a byte)
MAX_TEXT = 100                  # a text field, when all else was cut (6 chars each at most: 4 fit)


class Progress:
    def __init__(self, to: str | None = None):
        self.record: dict = {"to": to, "by": f"pid {os.getpid()} on {socket.gethostname()}", "phase": "starting",
                             "plan": None, "batch": None, "steps": {}, "bake_until": None, "gates": {},
                             "result": None, "done": 0}

    def plan(self, batches) -> None:
        """The batches the deploy will run, each a list of node names (the canary's first)."""
        self.record["plan"] = [list(batch.nodes) for batch in batches]

    def event(self, kind: str, f: dict, now: float) -> bool:
        """Take one event in; whether the record changed."""
        record = self.record
        if kind == "start":
            record.update(to=f.get("to", record["to"]), phase=f.get("phase") or "deploying")
        elif kind == "batch":
            record.update(batch={"index": f["index"], "of": f["of"], "nodes": list(f["nodes"]),
                                 "canary": bool(f.get("canary"))}, phase="updating", bake_until=None, gates={})
        elif kind == "step":
            arrow = "back: " if f.get("direction") == "back" else ""
            record["steps"][f["node"]] = f"{arrow}{f['step']} {f['status']}"
        elif kind == "bake":
            record.update(phase="baking", bake_until=round(now + f["seconds"], 1))
        elif kind == "baked":
            record.update(phase="baked" if f["ok"] else "bake failed", bake_until=None)
            if f["ok"]:
                record["done"] += len(f["nodes"])
        elif kind == "gate":
            gates = record["gates"]
            gates[f"{f['kind']} {f['name']}"] = f["outcome"]
            while len(gates) > MAX_GATES:
                del gates[next(iter(gates))]
        elif kind in ("failed", "rollback", "stopping", "interrupted", "replan"):
            record["phase"] = kind
        else:
            return False
        return True

    def finish(self, result: str) -> None:
        self.record.update(result=result, phase="finished", bake_until=None)

    def line(self) -> str:
        """The admin command that tells an lb: the record made smaller, a part at a time, until
        the line as sent fits (each node's step first, then the plan, then the batch's node names
        beyond the first few, said as "and K more", then the older gates, then long texts)."""
        record = json.loads(json.dumps(self.record))
        text = _command(record)
        if len(text) <= MAX_LINE_CHARS:
            return text
        record["steps"] = {}
        if len(_command(record)) > MAX_LINE_CHARS:
            record["plan"] = None
        batch = record["batch"]
        while len(text := _command(record)) > MAX_LINE_CHARS:
            if batch is not None and batch["nodes"]:
                keep = len(batch["nodes"]) // 2
                batch["more"] = batch.get("more", 0) + len(batch["nodes"]) - keep
                batch["nodes"] = batch["nodes"][:keep]
            elif record["gates"]:
                for name in list(record["gates"])[:max(1, len(record["gates"]) // 2)]:
                    del record["gates"][name]
            else:
                for key in ("to", "by", "phase", "result"):
                    if isinstance(record[key], str):
                        record[key] = record[key][:MAX_TEXT]
                break
        return _command(record)


def _command(record: dict) -> str:
    """`note deploy JSON` on one line, ASCII, its spaces (only ever inside strings) as \\u0020."""
    return "note deploy " + json.dumps(record, separators=(",", ":")).replace(" ", "\\u0020")


class Reporting:
    """The deploy's view, with its progress told to the lbs (`admin`: the Fleet)."""

    def __init__(self, view, admin, to: str | None):
        self.view, self.admin = view, admin
        self.progress = Progress(to)
        self._task: asyncio.Task | None = None
        self._dirty = False
        self._sent_at = 0.0

    def __getattr__(self, name):            # stats, error, close: the real view's
        return getattr(self.view, name)

    def plan(self, batches, notes, dry_run: bool, warnings=()) -> None:
        self.view.plan(batches, notes, dry_run, warnings)
        self.progress.plan(batches)
        self._send_soon()

    def event(self, kind: str, fields: dict) -> None:
        self.view.event(kind, fields)
        if self.progress.event(kind, fields, time.time()):
            self._send_soon()

    def summary(self, report: dict) -> None:
        self.view.summary(report)
        self.progress.finish(str(report.get("result", "done")))
        self._send_soon()

    def _send_soon(self) -> None:
        self._dirty = True
        if self._task is None or self._task.done():
            try:
                self._task = asyncio.get_running_loop().create_task(self._send())
            except RuntimeError:             # no loop (a view used outside the deploy): nothing to tell
                self._dirty = False

    async def _send(self) -> None:
        while self._dirty:
            await asyncio.sleep(max(0.0, self._sent_at + SEND_INTERVAL_S - time.monotonic()))
            self._dirty, self._sent_at = False, time.monotonic()
            line = self.progress.line()
            # each lb's own client, not the Fleet's call: a note must never mark an lb lost
            await asyncio.gather(*(self._tell(member.client, line) for member in list(self.admin.members)))

    @staticmethod
    async def _tell(client, line: str) -> None:
        try:
            await asyncio.wait_for(client.call(line, 5.0), 6.0)
        except Exception:                    # a courtesy: an lb that missed a note gets the next one
            pass

    async def flush(self) -> None:
        """The last note on its way before the deploy exits (bounded)."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 7.0)
            except Exception:
                pass
