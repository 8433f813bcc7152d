"""`bench/deploy_under_load.py --scenario skew`: version skew during a rolling deploy, as
browser tabs see it, through lb, HAProxy and nginx in the same run (issue 28's proof).

    .venv/bin/python bench/deploy_under_load.py --scenario skew [--tab-life 1m-5m] [--tail 10m]
        [--users 2000] [--arrival-rate 1] [--api-every 2-6] [--chunks 4] [--systems lb,haproxy,nginx]
        [--steady 10] [--bake 10s] [--canary-bake 30s] [--seed 28] [--tag T]

A quick check of the harness (about 4 minutes): --tab-life 20-60 --tail 60.

All three systems run at once, each over its own 10 `lb backend --spa` processes (v1) on
free ports, and one load generator (bench/skew_tabs.py) sends the same users, drawn once
from --seed, to each at the same moments. Users arrive at --arrival-rate a second (at most
--users) from the start until every deploy is done; their tabs stay open until --tail
seconds after the last v1 node of any system left service. After --steady seconds, the
three deploys start together: lb's `lb deploy --to v2 --batch 2 --canary 1` (its update
command stops the node's v1 backend and starts a v2 one on the same port), and the same
batches and steps for HAProxy and nginx (bench/skew_peers.py says how each drains).

Written: bench/results/skew[-TAG].json (per system: the counts, the samples, a 10 s
timeline, the deploy's events), and a table. lb's bar: 0 asset 404s, 0 failed requests,
0 cross-version API answers to header-carrying tabs while their version was in service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from deploy_under_load import RESULTS, DeployRun, System
from skew_peers import PEERS, PeerDeploy
from skew_tabs import Crowd, Service, Shape, Tally, UserPlans

from lb.core.errors import InvalidValue
from lb.core.values import parse_duration
from lb.loop import run_async

SYSTEMS = ("lb", "haproxy", "nginx")
DEPLOY_BOUND_S = 1800.0           # any deploy longer than this is stopped and reported
COLUMNS = (("asset 404s", "asset_404"), ("failed", "failed"),
           ("x-ver API hdr in service", "cross_api_header_in_service"),
           ("x-ver API hdr after gone", "cross_api_header_gone"),
           ("x-ver API no hdr", "cross_api_plain"), ("Gone hdrs", "gone_headers"), ("requests", "requests"))


def seconds(text: str) -> float:
    """'60', '60s' or '1m' -> 60.0."""
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def span(text: str) -> tuple[float, float]:
    """'20-60' or '1m-5m' -> (low, high) seconds."""
    low, _, high = text.partition("-")
    values = (seconds(low), seconds(high or low))
    if values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH with LOW <= HIGH, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("skew scenario")
    group.add_argument("--users", type=int, default=2000, help="users at most (default 2000)")
    group.add_argument("--arrival-rate", type=float, default=1.0, help="new users a second until the deploys end")
    group.add_argument("--tab-life", type=span, default=(60.0, 300.0),
                       help="a tab's lazy chunks load within LOW-HIGH of its page (default 1m-5m)")
    group.add_argument("--tail", type=seconds, default=600.0,
                       help="tabs stay open this long after the last v1 node left (default 10m)")
    group.add_argument("--api-every", type=span, default=(2.0, 6.0), help="a tab's API calls, LOW-HIGH apart (default 2-6)")
    group.add_argument("--chunks", type=int, default=4, help="lazy chunks a page names (default 4)")
    group.add_argument("--asset-bytes", type=int, default=4096)
    group.add_argument("--systems", default=",".join(SYSTEMS), help="of lb,haproxy,nginx (default all three)")
    group.add_argument("--seed", type=int, default=28, help="the users' shape, the same for every system")


def run(args) -> int:
    systems = [s for s in args.systems.split(",") if s]
    if not systems or any(s not in SYSTEMS for s in systems):
        raise SystemExit(f"--systems: expected some of {','.join(SYSTEMS)}, got {args.systems!r}")
    backend_args = ("--spa", "--chunks", str(args.chunks), "--asset-bytes", str(args.asset_bytes))
    workdir = Path(tempfile.mkdtemp(prefix="lb-skew-", dir="/tmp"))
    signal.signal(signal.SIGTERM, signal.default_int_handler)    # `timeout`, `kill`: stop as Ctrl-C does
    started = []
    try:
        for name in systems:
            (workdir / name).mkdir()
            if name == "lb":
                system = System(workdir / name, "skew", args.workers, backend_args=backend_args)
                trust_no_client(system.config_path)
            else:
                system = PEERS[name](workdir / name, backend_args)
            started.append((name, system))
            system.start()
        report = run_async(scenario(dict(started), args))
    finally:
        for name, system in reversed(started):
            try:
                system.stop()
            except Exception as exc:           # stop the others all the same
                print(f"stopping {name}: {exc!r}")
    report["workdir"] = str(workdir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"skew{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"written: {out}")
    return 0


def trust_no_client(config_path: Path) -> None:
    """The browsers come from 127.0.0.1, which lb's default `skew.override_from` trusts to name
    a version nobody is sent to yet; a browser on the internet is trusted with nothing."""
    config = yaml.safe_load(config_path.read_text())
    config["skew"] = {**config.get("skew", {}), "override_from": []}
    config_path.write_text(yaml.safe_dump(config))


async def scenario(systems: dict, args) -> dict:
    t0 = time.monotonic() + 0.5
    services = {name: Service(list(system.ports), "v1", t0) for name, system in systems.items()}
    tallies = {name: Tally(t0) for name in systems}
    targets = {name: (f"http://127.0.0.1:{system.port}", tallies[name], services[name])
               for name, system in systems.items()}
    plans = UserPlans(args.seed, args.arrival_rate, args.users, args.tab_life)
    crowd = Crowd(plans, Shape(args.asset_bytes, args.chunks, args.api_every), targets, t0)
    lag = LagWatch(t0)
    background = [asyncio.create_task(crowd.arrive()), asyncio.create_task(lag.run())]
    await asyncio.sleep(0.5 + args.steady)
    deploys = {name: deployer(name, system, services[name], args) for name, system in systems.items()}
    codes = await asyncio.gather(*(bounded(deploy.run()) for deploy in deploys.values()))
    deploys_done = time.monotonic()
    crowd.stop_arriving.set()
    gone = [t0 + s.gone_at["v1"] for s in services.values() if "v1" in s.gone_at]
    close_at = max(deploys_done, max(gone, default=deploys_done) + args.tail)   # v1 kept (a rollback): after the deploys
    await asyncio.sleep(max(0.0, close_at - time.monotonic()))
    cancelled = await crowd.close()
    lag.stopping = True
    await asyncio.wait(background, timeout=5)
    return {
        "bench": "deploy_under_load", "scenario": "skew",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {name: version_of(name) for name in systems if name != "lb"},
        "load": {"users_arrived": crowd.arrived, "users_limit": args.users, "arrival_per_s": args.arrival_rate,
                 "tab_life_s": list(args.tab_life), "api_every_s": list(args.api_every), "chunks": args.chunks,
                 "asset_bytes": args.asset_bytes, "steady_s": args.steady, "tail_s": args.tail, "seed": args.seed,
                 "bake": args.bake, "canary_bake": args.canary_bake,
                 "client": "aiohttp; a jar, 6 connections and an asset cache per user; 10 s timeout"},
        "seconds": round(time.monotonic() - t0, 1),
        "tabs_cancelled_at_close": cancelled, "client_errors": dict(crowd.errors),
        "client_lag_ms": lag.report(),
        "systems": {name: {**tallies[name].report(),
                           "deploy": deploy_report(deploys[name], code, services[name])}
                    for (name, deploy), code in zip(deploys.items(), codes)},
    }


def deployer(name: str, system, service: Service, args):
    bake_s, canary_bake_s = parse_duration(args.bake), parse_duration(args.canary_bake)
    if name != "lb":
        return PeerDeploy(system, service, bake_s, canary_bake_s)
    # the same bakes as the peers' scripts, whatever the tabs' thin load lets them judge
    deploy = DeployRun(system, service.t0, args.bake, args.canary_bake, args.update_nice,
                       extra=("--min-requests", "0"))
    deploy.listeners.append(lambda event: follow_lb(service, event))
    return deploy


def follow_lb(service: Service, event: dict) -> None:
    """A node leaves service when lb's deploy starts draining it, and is back once it is up."""
    if event.get("event") != "step":
        return
    if event["step"] == "drain" and event["status"] == "start":
        service.take_out(event["node"])
    elif event["step"] == "wait up" and event["status"] == "ok":
        service.put_back(event["node"], "v2" if event["direction"] == "forward" else "v1")


async def bounded(deploy) -> int | str:
    try:
        return await asyncio.wait_for(deploy, DEPLOY_BOUND_S)
    except asyncio.TimeoutError:
        return f"stopped after {DEPLOY_BOUND_S:g}s"


def deploy_report(deploy, code, service: Service) -> dict:
    lb = isinstance(deploy, DeployRun)
    events = deploy.events
    return {
        "exit": code, "how": "lb deploy" if lb else "bench/skew_peers.py",
        "result": (events[-1] if events else {}).get("result") if lb else ("done" if code == 0 else deploy.error),
        "stderr_tail": deploy.stderr.splitlines()[-8:] if lb and hasattr(deploy, "stderr") else None,
        "batches": [e["nodes"] for e in events if e.get("event") == "batch"],
        "started_at": events[0]["at"] if events else None, "ended_at": events[-1]["at"] if events else None,
        "v1_gone_at": service.gone_at.get("v1"), "service_events": service.events,
        "events": [e for e in events if e.get("event") != "step" or e.get("status") != "ok"
                   or e.get("step") in ("wait drained", "wait up")],
    }


def version_of(program: str) -> str:
    flag = "-v"
    out = subprocess.run([program, flag], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0]


class LagWatch:
    """The load generator's own stalls: a 50 ms timer's worst lateness per 10 s."""

    def __init__(self, t0: float):
        self.t0, self.worst, self.stopping = t0, {}, False

    async def run(self) -> None:
        while not self.stopping:
            started = time.monotonic()
            await asyncio.sleep(0.05)
            bucket = int((started - self.t0) // 10) * 10
            self.worst[bucket] = max(self.worst.get(bucket, 0.0), time.monotonic() - started - 0.05)

    def report(self) -> dict:
        values = list(self.worst.values())
        return {"max": round(max(values, default=0) * 1000, 1),
                "per_10s": {t: round(v * 1000, 1) for t, v in sorted(self.worst.items())}}


def print_table(report: dict) -> None:
    load = report["load"]
    print(f"skew: {load['users_arrived']} users, tab life {load['tab_life_s']} s, tail {load['tail_s']:g} s, "
          f"{report['seconds']} s in all; client lag max {report['client_lag_ms']['max']} ms")
    header = ["system", *(title for title, _ in COLUMNS), "deploy"]
    rows = []
    for name, counts in report["systems"].items():
        deploy = counts["deploy"]
        rows.append([name, *(str(counts[key]) for _, key in COLUMNS),
                     f"exit {deploy['exit']}, v1 gone at {deploy['v1_gone_at']} s"])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    if "lb" in report["systems"]:
        lb = report["systems"]["lb"]
        bar = lb["asset_404"] == 0 and lb["failed"] == 0 and lb["cross_api_header_in_service"] == 0
        print(f"lb's bar (0 asset 404s, 0 failed, 0 cross-version API to header tabs in service): "
              f"{'met' if bar else 'NOT met'}")
    if report["client_errors"]:
        print(f"client errors (a bug in the harness): {report['client_errors']}")
