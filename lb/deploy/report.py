"""The report a deploy ends with: its result, its failure, each node as lb has it now and what
each bake judged (the view prints it as the summary table; JSON lines carry it whole)."""

from __future__ import annotations

import time

from ..core.errors import DeployError
from .client import StepFailed
from .configsync import config_update
from .plan import EXIT_DONE, EXIT_INTERRUPTED, EXIT_ROLLED_BACK, EXIT_STUCK, DeployState, NodeProgress


RESULTS = {EXIT_DONE: "done", EXIT_ROLLED_BACK: "failed and rolled back",
           EXIT_STUCK: "failed and NOT fully rolled back", EXIT_INTERRUPTED: "interrupted"}


def node_result(name: str, state: DeployState, progress: NodeProgress) -> str:
    if progress.error:
        return f"{progress.error}"
    if progress.direction == "back":
        return "rolled back" if progress.finished else f"rolling back, at {progress.next_step.name}"
    if name in state.baked:
        return "updated"
    if progress.finished:
        return "updated, bake not passed"
    if progress.done or progress.running:
        return f"at {progress.next_step.name}"
    return "not started"


async def report(deployer, code: int) -> dict:
    """What `deployer` (run.py's Deployer) did, as a dict."""
    state = deployer.state
    fleet = deployer.admin
    fleet.tolerate_lost = True
    try:
        servers = {s["name"]: s for s in await fleet.servers()}
    except (DeployError, StepFailed):
        servers = {}
    nodes = []
    judged = {n: b.get("requests") for b in state.bakes for n in b["nodes"] if b.get("requests") is not None}
    for name in [n for b in state.batches for n in b.nodes]:
        server, times = servers.get(name, {}), deployer.timings.get(name, {})
        nodes.append({"name": name, "was": state.old_versions[name], "version": server.get("version", "?"),
                      "state": server.get("state", "?"), "health": server.get("health", "?"),
                      "result": node_result(name, state, state.node(name)),
                      "drain_s": times.get("wait drained", ""), "update_s": times.get("update", ""),
                      "up_s": times.get("wait up", ""), "judged": judged.get(name, "")})
        if len(fleet.members) > 1:
            lost = {label: {**(fleet.last_seen.get(label, {}).get(name) or {}), "lost": True} for label in fleet.lost}
            nodes[-1]["on"] = {**lost, **server.get("on", {})}
    config = config_update(nodes, {name: s["version"] for name, s in servers.items()}, deployer.write_config,
                           code == EXIT_DONE and bool(servers))
    resume = None
    if code in (EXIT_INTERRUPTED, EXIT_STUCK):
        resume = f"lb deploy {fleet.flags} --state {deployer.state_path} --resume"
    return {"to": deployer.opts.to, "result": RESULTS.get(code, "error"), "exit": code,
            "seconds": round(time.monotonic() - deployer.started, 1), "failure": state.failure,
            "nodes": nodes, "bakes": state.bakes, "warnings": [w for b in state.bakes for w in b.get("warnings", [])],
            "log": deployer.log_path, "resume": resume, "config": config,
            **({"lbs": fleet.labels, "lost": fleet.lost, "left": fleet.left}
               if len(fleet.members) > 1 or fleet.left else {})}
