"""Many data planes seen as one: the reports of every worker merged into one `Report`. No I/O.

Theory of operation
-------------------
With `workers: N` the master's control plane must answer as if there were one data
plane. The arbiter (lb/process/arbiter.py) hands every report a member sends (a
worker, or after an upgrade the old master standing for its own workers) to
`ReportMerge`, and passes what comes out to `Control.on_report`:

- what was served (stats, outcomes, failures, retries, pins, assets learned, skew
  counters) passes through as it
  comes: deltas add up;
- what is true now (in flight and tunnels per node, clients, queued) is the sum of
  every live member's latest report;
- the generation is the oldest any live member has applied, so a drain completes
  only when every member has reported nothing in flight under the view that took
  the node out;
- a cut completes when every member asked has answered, with the sum of what they
  closed; a member that is gone answers with 0 and leaves the sums (its
  connections died with it);
- a collect is done once every member asked has reported (or is gone).

Members are whatever objects the caller uses for them (compared by identity), and
a collect is any token the caller likes (the arbiter uses its future): nothing
here knows a process.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Hashable, Iterable

from .planes import NodeReport, Report, RoutingView
from .stats import StatsDelta


class ReportMerge:
    """The latest report of each live member, the cuts and collects waiting for answers."""

    def __init__(self):
        self.latest: dict[Hashable, Report] = {}
        self._cuts: dict[str, tuple[set, list[int]]] = {}     # node name -> (members to answer, [total])
        self._collects: list[tuple[set, object]] = []          # (members to report, token)

    def join(self, member, report: Report | None = None) -> None:
        """A member whose counts stand from now on (the old master: what its workers carry)."""
        if report is not None:
            self.latest[member] = report

    def report(self, member, report: Report, view: RoutingView | None) -> Report:
        """The merged report to pass on for one member's report."""
        self.latest[member] = report
        deltas = {name: (got.stats, got.outcomes,
                         self._cut_answered(name, member, got.cut) if got.cut is not None else None)
                  for name, got in report.nodes.items()}
        merged = self._merged(deltas, report.failed, report.retries, report.pins, view,
                              report.assets, report.skew)
        self._answered(member)
        return merged

    def gone(self, member, view: RoutingView | None) -> Report | None:
        """A member exited: what is true now without it, with the cuts it completed by answering
        nothing; None when it had neither reported nor been asked for a cut."""
        had_report = self.latest.pop(member, None) is not None
        cuts = {}
        for name in list(self._cuts):
            total = self._cut_answered(name, member, 0)
            if total is not None:
                cuts[name] = total
        self._answered(member)
        return self.now(view, cuts) if had_report or cuts else None

    def cut(self, name: str, members: Iterable, view: RoutingView | None) -> Report | None:
        """Start a cut of `name` answered by `members`; when there are none, the report that
        completes it at once (the cut closed nothing)."""
        waiting = set(members)
        self._cuts[name] = (waiting, [0])
        if waiting:
            return None
        return self.now(view, {name: self._cut_answered(name, None, 0)})

    def collect(self, token, members: Iterable) -> None:
        """Wait for a report from each of `members`; `token` shows up in `collected()` then."""
        self._collects.append((set(members), token))

    def collected(self) -> list:
        """The tokens of the collects every member answered (each returned once)."""
        done = [token for waiting, token in self._collects if not waiting]
        self._collects = [(waiting, token) for waiting, token in self._collects if waiting]
        return done

    def now(self, view: RoutingView | None, cuts: dict[str, int] | None = None) -> Report:
        """What is true now over the live members, with no deltas, carrying completed cuts."""
        cuts = cuts or {}
        names = {name for report in self.latest.values() for name in report.nodes}
        names |= set(cuts) | ({n.name for n in view.nodes} if view is not None else set())
        return self._merged({name: (StatsDelta(), [], cuts.get(name)) for name in names}, Counter(), 0, None, view)

    def _answered(self, member) -> None:
        for waiting, _ in self._collects:
            waiting.discard(member)

    def _cut_answered(self, name: str, member, cut: int) -> int | None:
        """Count one member's answer to a cut; the total once every asked member answered."""
        pending = self._cuts.get(name)
        if pending is None:
            return None
        waiting, total = pending
        waiting.discard(member)
        total[0] += cut
        if waiting:
            return None
        del self._cuts[name]
        return total[0]

    def _merged(self, deltas: dict, failed: Counter, retries: int, pins, view: RoutingView | None,
                assets: list | None = None, skew: Counter | None = None) -> Report:
        """Per node, what is true now summed over the live members' latest reports, with
        `deltas` (name -> stats, outcomes, cut); pool-wide deltas pass through."""
        live = list(self.latest.values())
        generation = min((r.generation for r in live), default=view.generation if view is not None else 0)
        nodes = {name: NodeReport(sum(r.nodes[name].inflight for r in live if name in r.nodes),
                                  sum(r.nodes[name].tunnels for r in live if name in r.nodes), *delta)
                 for name, delta in deltas.items()}
        return Report(generation, nodes, failed, retries, pins,
                      sum(r.clients for r in live), sum(r.queued for r in live), assets or [], skew)


def share(total: int, workers: int, slot: int) -> int:
    """Worker `slot`'s part of a cap of `total` split among `workers` (at least 1)."""
    return max(1, total // workers + (1 if slot < total % workers else 0))


def view_for(view: RoutingView | None, workers: int, slot: int) -> RoutingView | None:
    """The view as one worker applies it: a node's max_conns is lb's, shared out among the
    workers (each at least 1, or a worker would queue every request for that node)."""
    if view is None or workers == 1 or not any(n.max_conns for n in view.nodes):
        return view
    return dataclasses.replace(view, nodes=tuple(
        dataclasses.replace(n, max_conns=share(n.max_conns, workers, slot)) if n.max_conns else n
        for n in view.nodes))
