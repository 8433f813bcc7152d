"""Version pinning end to end: 200 cookie-keeping sessions while real backends change version."""

import asyncio
import time
from collections import Counter, defaultdict

from lb.demo.users import Users

from conftest import Backend, Lb, wait_for_requests

SESSIONS = 200
THINK_S = 0.15
FAST = {"health": {"interval": "200ms", "timeout": "500ms", "rise": 1, "fall": 2},
        "slow_start": "0s", "pinning": {"max_overload": 1.5}}


class Sessions(Users):
    """SESSIONS independent clients, each with its own cookie and connection, all along."""

    def __init__(self, lb: Lb):
        super().__init__("127.0.0.1", lb.port, slots=SESSIONS, life=None, think_s=THINK_S)
        self.switches: dict[str, list[tuple[float, float]]] = defaultdict(list)  # node -> (drain, up)

    def worst_share_ratio(self, since: float) -> float:
        """Max over 1 s windows of a node's requests / the mean of the nodes in service.

        A node whose switch (drain .. up) overlaps a window was in service for
        only part of it: it counts in neither the numerator nor the mean.
        """
        windows: dict[int, Counter] = defaultdict(Counter)
        for r in self.records:
            if r.sent >= since and r.node is not None:
                windows[int(r.sent - since)][r.node] += 1
        worst = 0.0
        for second, counts in sorted(windows.items())[:-1]:   # the last window is partial
            start, end = since + second, since + second + 1
            steady = {n: c for n, c in counts.items()
                      if not any(s < end and e > start for s, e in self.switches.get(n, ()))}
            if len(steady) >= 2:
                fair = sum(steady.values()) / len(steady)
                worst = max(worst, max(steady.values()) / fair)
        return worst


async def switch(lb, spawn, backends, index, version):
    """What a deploy does to one node: drain, restart as `version`, relabel, ready, up."""
    name = f"web{index + 1}"
    for line in (f"drain {name}", f"wait {name} drained 10"):
        assert (await asyncio.to_thread(lb.ctl, line))["ok"], line
    backends[index].stop()
    backends[index] = await asyncio.to_thread(spawn, Backend, name, version, backends[index].port)
    for line in (f"set version {name} {version}", f"ready {name}", f"wait {name} up 10"):
        reply = await asyncio.to_thread(lb.ctl, line)
        assert reply["ok"], (line, reply)


async def run_rollout(spawn, tmp_path, plan, until=lambda sessions: True):
    """Switch nodes as `plan` says under SESSIONS users; then keep the load on until every
    session made a request after the rollout and `until(sessions)` holds (at most 30 s)."""
    backends = [spawn(Backend, f"web{i}") for i in range(1, 11)]
    lb = spawn(Lb, tmp_path, [b.config() for b in backends], **FAST)
    sessions = Sessions(lb)
    sessions.start()
    await wait_for_requests(sessions, SESSIONS * 3)      # steady traffic before the rollout
    started = time.monotonic()
    marks = {}
    for step in plan:
        if step[0] == "target":
            assert (await asyncio.to_thread(lb.ctl, f"set target {step[1]}"))["ok"]
            continue
        index, version = step
        marks[index, version] = time.monotonic()            # the moment its drain begins
        await switch(lb, spawn, backends, index, version)
        sessions.switches[f"web{index + 1}"].append((marks[index, version], time.monotonic()))
    sessions.marks = marks
    ended = time.monotonic()
    deadline = ended + 30
    while not (all(seq and seq[-1][0] > ended for seq in sessions.seen.values()) and until(sessions)):
        assert time.monotonic() < deadline, "no request after the rollout from some sessions, or not until()"
        await asyncio.sleep(0.05)
    await sessions.stop()
    return lb, sessions, started


async def test_a_rollout_one_node_at_a_time_never_sends_anyone_back(spawn, tmp_path):
    lb, sessions, started = await run_rollout(spawn, tmp_path,
                                              [("target", "v2")] + [(i, "v2") for i in range(10)])
    assert sessions.failures == []
    assert len(sessions.seen) == SESSIONS
    # under load all along: requests were served while each node was being switched
    for node, windows in sessions.switches.items():
        for drain_at, up_at in windows:
            assert any(drain_at <= r.sent <= up_at for r in sessions.records), node
    assert sessions.backward_flips(["v1", "v2"]) == []
    assert all(seq[-1][1] == "v2" for seq in sessions.seen.values())
    versions = lb.ctl("show versions")
    moved = sum(m["count"] for m in versions["migrations"] if m["direction"] == "forward")
    assert moved >= SESSIONS * 0.5 and all(m["direction"] == "forward" for m in versions["migrations"])
    worst = sessions.worst_share_ratio(started)
    print(f"requests {len(sessions.records)}, forward moves {moved}, worst 1 s node share "
          f"{worst:.2f} x fair")
    assert worst <= 1.5, worst            # max_overload


async def test_three_versions_in_flight_are_monotonic(spawn, tmp_path):
    plan = [("target", "v2")] + [(i, "v2") for i in range(3)] + \
           [("target", "v3")] + [(i, "v3") for i in range(3, 6)]
    # v3 gets its users as v2 sheds its overload forward: wait for that, then judge
    lb, sessions, started = await run_rollout(spawn, tmp_path, plan, until=lambda s: any(
        version == "v3" for seq in s.seen.values() for _, version in seq))
    assert sessions.failures == []
    assert sessions.backward_flips(["v1", "v2", "v3"]) == []
    rows = {r["version"]: r for r in lb.ctl("show versions")["versions"]}
    assert [rows[v]["nodes"] for v in ("v1", "v2", "v3")] == [4, 3, 3]
    assert {v for seq in sessions.seen.values() for _, v in seq} == {"v1", "v2", "v3"}


async def test_a_rollback_moves_clients_back_only_when_nothing_newer_is_left(spawn, tmp_path):
    plan = [("target", "v2")] + [(i, "v2") for i in range(4)] + [(i, "v1") for i in range(4)]
    lb, sessions, started = await run_rollout(spawn, tmp_path, plan)
    assert sessions.failures == []
    # Until the last v2 node began draining, nobody was sent back.
    assert sessions.backward_flips(["v1", "v2"], before=sessions.marks[3, "v1"]) == []
    migrations = lb.ctl("show versions")["migrations"]
    backward = [m for m in migrations if m["direction"] == "backward"]
    assert backward and all((m["from"], m["to"]) == ("v2", "v1") for m in backward)
    moved_back = {i for i, seq in sessions.seen.items()
                  if any(a == "v2" and b == "v1" for (_, a), (_, b) in zip(seq, seq[1:]))}
    assert sum(m["count"] for m in backward) >= len(moved_back) > 0
    assert all(seq[-1][1] == "v1" for seq in sessions.seen.values())
