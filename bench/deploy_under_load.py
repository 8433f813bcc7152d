"""The proof: a full rolling deploy under load, and what every client saw.

    .venv/bin/python bench/deploy_under_load.py [--scenario rolling|crash|upgrade-lb|restart-lb|websocket|fleet|skew]
        [--sessions 200] [--rate 1000] [--life 100] [--steady 10] [--baseline 5]
        [--bake 10s] [--canary-bake 30s] [--tag T] [--workers N] [--lbs N] [--store etcd]

10 `lb backend` processes (v1), lb on the embedded default config (free ports,
its own admin socket, state and access log), and a load generator that shares
no code with lb: aiohttp, --sessions users at a time, each with its own cookie
jar and one keep-alive connection, sending on an open-loop schedule that adds up
to --rate requests/s. Latency is measured from the *scheduled* send time, so a
stall shows up in full (no coordinated omission). A user leaves after --life
requests and a new one (no cookie) takes its slot: new users are what a canary
gets, as pinned users stay on their version. First, --baseline seconds of the
same load go straight to the backends, for what the machine costs without lb.

Phases: --steady seconds on v1; `lb deploy --to v2 --batch 2 --canary 1`, whose
update command stops the node's backend (SIGTERM, after lb drained it) and
starts a v2 one with a 1 s warmup; --steady seconds on v2. Scenarios add to it:
  rolling     nothing more
  crash       when the first batch after the canary starts, the last node in the
              plan (still v1, in service) is killed with SIGKILL, not drained
  upgrade-lb  when the second batch after the canary starts updating, lb itself is
              upgraded (`lb ctl upgrade`: a new master takes the sockets and the state)
  restart-lb  lb runs socket-activated (the bench holds the listening socket, as
              systemd's lb.socket would); when the second batch after the canary
              starts updating, lb is stopped (SIGTERM) and started again on the same
              config, state and socket: `systemctl restart lb`
  websocket   also 100 long-lived WebSocket sessions, one message a second each,
              every echo checked; lb's drain.timeout is 5 s, so tunnels on a
              draining node get close 1001 and reconnect
  fleet       --lbs lbs (default 2) over the same 10 backends, each on its own
              config, socket and state; every user alternates between them request
              by request (its cookie jar goes to both, as a browser's does to a name
              that DNS round-robin resolves to several addresses), and one `lb deploy`
              with a -s per lb drives them all; with --store etcd the lbs run in
              cluster mode over a three-member etcd (Debian's etcd-server, as the tests
              start it) and `lb deploy --cluster etcd://.../bench` finds them there
  skew        browser tabs of an SPA (`lb backend --spa`) across the deploy, through lb,
              HAProxy and nginx at once: asset 404s, cross-version API answers
              (bench/skew_run.py says it all; its own options are listed by --help)

Every response is checked: status, a JSON body whose version matches the
X-Backend-Version header. Written: bench/results/<scenario>[-<tag>].json and a
timeline picture .png beside it (with the `bench` extra, matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from throughput import free_port, wait_port  # noqa: E402  (bench/ is this script's directory)

from lb.demo.backend import start_detached, stop_pidfile  # noqa: E402
from lb.deploy.client import request  # noqa: E402
from lb.loop import run_async  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from supervise import activated_command, become_subreaper, gone  # noqa: E402  (the tests' helper)

RESULTS = ROOT / "bench" / "results"
NODES = 10
WS_SESSIONS = 100
REQUEST_TIMEOUT_S = 10.0
VERSIONS = ("v1", "v2")


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"count": len(ordered), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
            "max_ms": round(ordered[-1] * 1000, 2)}


# -- the system under test ------------------------------------------------------------

class System:
    """10 backends and lb in a scratch directory; everything stopped by pid at the end."""

    def __init__(self, workdir: Path, scenario: str, workers: int | None = None, lbs: int = 1,
                 backend_args: tuple[str, ...] = (), store: str | None = None):
        """`backend_args`: more `lb backend` arguments, for the v1 backends and the update (skew: --spa)."""
        self.dir = workdir
        self.names = [f"web{i}" for i in range(1, NODES + 1)]
        self.ports = {name: free_port() for name in self.names}
        self.backend_args = backend_args
        config = yaml.safe_load((ROOT / "config" / "lb.yaml").read_text())
        self.port = free_port()
        config.update(listen=f"127.0.0.1:{self.port}", metrics={"listen": f"127.0.0.1:{free_port()}"},
                      admin={"socket": str(workdir / "lb.sock")}, state_file=str(workdir / "lb.state"),
                      access_log=str(workdir / "access.log"))
        if workers is not None:
            config["workers"] = workers
        if scenario == "websocket":
            config["drain"] = {"timeout": "5s"}
        self.etcd = None                        # --store etcd: three members, started here, stopped by pid
        if store == "etcd":
            from etcd import EtcdCluster        # the tests' real etcd (tests/e2e/etcd.py)
            self.etcd = EtcdCluster(workdir / "etcd", 3, free_port)
            config["cluster"] = {"store": "etcd", "endpoints": self.etcd.endpoints, "name": "bench"}
        for backend in config["backends"]:
            backend["address"] = f"127.0.0.1:{self.ports[backend['name']]}"
        self.config_path = workdir / "lb.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.sockets = [workdir / "lb.sock"]
        self.lb_ports = [self.port]
        self.others: list[tuple[subprocess.Popen | None, Path]] = []     # fleet: the other lbs, and configs
        for i in range(2, lbs + 1):
            port = free_port()
            other = {**config, "listen": f"127.0.0.1:{port}", "metrics": {"listen": f"127.0.0.1:{free_port()}"},
                     "admin": {"socket": str(workdir / f"lb{i}.sock")}, "state_file": str(workdir / f"lb{i}.state"),
                     "access_log": str(workdir / f"access{i}.log")}
            path = workdir / f"lb{i}.yaml"
            path.write_text(yaml.safe_dump(other))
            self.sockets.append(workdir / f"lb{i}.sock")
            self.lb_ports.append(port)
            self.others.append((None, path))
        from lb.core.values import parse_duration
        self.slow_start_s = parse_duration(config.get("slow_start", "10s"))
        self.lb: subprocess.Popen | None = None
        self.master_pid = 0                     # the serving master: another after an upgrade
        self.held = None                        # restart-lb: the socket systemd would hold
        if scenario == "restart-lb":
            self.held = socket.socket()
            self.held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.held.bind(("127.0.0.1", self.port))
            self.held.listen(4096)

    def pidfile(self, name: str) -> str:
        return str(self.dir / f"{name}.pid")

    def update_command(self, nice: int = 0) -> str:
        return update_command(self.dir, self.backend_args, nice)

    def start(self) -> None:
        start_backends(self.dir, self.ports, self.backend_args)
        self.start_lb()
        for i, (_, path) in enumerate(self.others):
            with open(self.dir / f"lb{i + 2}.err", "ab") as err:
                proc = subprocess.Popen([sys.executable, "-m", "lb.cli", "serve", "-c", str(path)], cwd=ROOT,
                                        stderr=err)
            self.others[i] = (proc, path)
            wait_port(self.lb_ports[i + 1], proc=proc)

    def start_lb(self) -> None:
        serve = ["serve", "-c", str(self.config_path)]
        with open(self.dir / "lb.err", "ab") as err:
            if self.held is not None:
                fds = [self.held.fileno()]
                self.lb = subprocess.Popen(activated_command(fds, ["http"], serve), pass_fds=fds, cwd=ROOT,
                                           stderr=err)
            else:
                self.lb = subprocess.Popen([sys.executable, "-m", "lb.cli", *serve], cwd=ROOT, stderr=err)
        self.master_pid = self.lb.pid
        try:
            deadline = time.monotonic() + 15
            while not os.path.exists(self.dir / "lb.sock") and time.monotonic() < deadline:
                if self.lb.poll() is not None:
                    raise RuntimeError("exited")
                time.sleep(0.02)
            wait_port(self.port, proc=self.lb)
        except RuntimeError:
            raise RuntimeError(f"lb did not start: {(self.dir / 'lb.err').read_text()[-2000:]}") from None

    def upgrade_lb(self) -> dict:
        reply = request(str(self.dir / "lb.sock"), "upgrade", timeout_s=90)
        if reply.get("ok"):
            self.master_pid = reply["upgrade"]["new_pid"]
        return reply

    def stop_lb(self) -> None:
        if self.master_pid and not gone(self.master_pid):
            os.kill(self.master_pid, signal.SIGTERM)
            deadline = time.monotonic() + 40
            while not gone(self.master_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not gone(self.master_pid):
                os.kill(self.master_pid, signal.SIGKILL)
        if self.lb is not None:
            try:
                self.lb.wait(40)          # the first master: itself, or gone after an upgrade
            except subprocess.TimeoutExpired:
                self.lb.kill()
                self.lb.wait()

    def kill_backend(self, name: str) -> None:
        from lb.demo.backend import backend_alive, read_pidfile
        pid = read_pidfile(self.pidfile(name))
        if pid and backend_alive(pid):
            os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        self.stop_lb()
        for proc, _ in self.others:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        stop_backends(self.dir, self.names)
        if self.etcd is not None:
            self.etcd.stop()

    @property
    def deploy_targets(self) -> list[str]:
        """How `lb deploy` reaches the lbs: a -s per socket, or the cluster in etcd."""
        if self.etcd is not None:
            return ["--cluster", f"etcd://{','.join(self.etcd.endpoints)}/bench"]
        return [arg for path in self.sockets for arg in ("-s", str(path))]


def update_command(workdir: Path, backend_args: tuple[str, ...] = (), nice: int = 0) -> str:
    """The deploy's update command for backends kept in `workdir`: stop the node's backend
    (its pidfile's) and start one on {version} with a 1 s warmup, detached."""
    extra = "".join(f" {arg}" for arg in backend_args)
    return (f"{f'nice -n {nice} ' if nice else ''}{sys.executable} -m lb.cli backend --listen {{host}}:{{port}} --version {{version}} "
            f"--name {{name}} --warmup 1 --pidfile {workdir}/{{name}}.pid --replace --detach "
            f"--log {workdir}/{{name}}.log{extra}")


def start_backends(workdir: Path, ports: dict[str, int], backend_args: tuple[str, ...] = ()) -> None:
    """`lb backend` v1 on each {name: port}, detached, pidfile and log in `workdir`."""
    for name, port in ports.items():
        start_detached(["--listen", f"127.0.0.1:{port}", "--version", "v1", "--name", name, *backend_args],
                       str(workdir / f"{name}.pid"), str(workdir / f"{name}.log"))


def stop_backends(workdir: Path, names: list[str]) -> None:
    for name in names:
        stop_pidfile(str(workdir / f"{name}.pid"))


# -- the clients --------------------------------------------------------------------------

class Load:
    """Open-loop HTTP users with cookies, and optional WebSocket sessions."""

    def __init__(self, url: str | list[str], sessions: int, rate: float, life: int = 0):
        """`url` a list (a fleet): each user alternates between them, request by request."""
        self.urls = list(url) if isinstance(url, list) else [url]
        self.url, self.sessions, self.rate, self.life = self.urls[0], sessions, rate, life
        # (scheduled at, latency s, failure reason or "", version, node, session)
        self.records: list[tuple] = []
        self.ws_events: list[tuple] = []          # (at, kind, detail)
        self.ws_messages = 0
        self.lag: dict[int, float] = defaultdict(float)   # second -> the client's worst event-loop lag
        self.t0 = 0.0
        self.stopping = False

    async def watch_lag(self, until: float) -> None:
        """The load generator's own stalls: a 10 ms timer's lateness, per second. A client
        starved of CPU delays its sends, and open-loop latency charges that to the server."""
        while time.monotonic() < until and not self.stopping:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            late = time.monotonic() - started - 0.01
            second = int(started - self.t0)
            self.lag[second] = max(self.lag[second], late)

    async def run_http(self, slot: int, until: float, url: str | None = None) -> None:
        """One slot of the schedule: a user with its own cookie jar and connection, who
        leaves after `life` requests (0: never) and is replaced by a new one."""
        period = self.sessions / self.rate
        next_at = self.t0 + slot / self.rate
        generation = 0
        while next_at < until and not self.stopping:
            user = slot * 1_000_000 + generation
            jar = aiohttp.CookieJar(unsafe=True)        # unsafe: cookies from an IP-address host
            connector = aiohttp.TCPConnector(limit=len(self.urls))       # a connection per lb
            async with aiohttp.ClientSession(cookie_jar=jar, connector=connector,
                                             timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as http:
                sent = 0
                while next_at < until and not self.stopping and (not self.life or sent < self.life):
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    target = url or self.urls[(slot + sent) % len(self.urls)]
                    self.records.append((next_at - self.t0, *await self.one(http, next_at, target), user))
                    next_at += period
                    sent += 1
            generation += 1

    async def one(self, http, scheduled: float, url: str | None = None) -> tuple:
        version = node = None
        try:
            async with http.get((url or self.url) + "/") as resp:
                body = await resp.read()
                status, header_version = resp.status, resp.headers.get("X-Backend-Version")
        except asyncio.TimeoutError:
            return time.monotonic() - scheduled, "timeout", None, None
        except (aiohttp.ClientError, OSError) as exc:
            return time.monotonic() - scheduled, f"connection error ({type(exc).__name__})", None, None
        latency = time.monotonic() - scheduled
        if status >= 500:
            return latency, f"status {status}", None, None
        if status != 200:
            return latency, f"status {status}", None, None
        try:
            data = json.loads(body)
            version, node = data["version"], data["node"]
            if version != header_version or version not in VERSIONS:
                raise ValueError(version)
        except (ValueError, KeyError, TypeError):
            return latency, "wrong body", None, None
        return latency, "", version, node

    async def run_ws(self, index: int, until: float) -> None:
        """A long-lived WebSocket: a message a second, every echo checked; reconnect on 1001."""
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            while time.monotonic() < until and not self.stopping:
                try:
                    async with http.ws_connect(self.url.replace("http", "ws") + "/ws", heartbeat=None) as ws:
                        await self._ws_talk(ws, index, until)
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    self.ws_events.append((time.monotonic() - self.t0, "failure",
                                           f"connection error ({type(exc).__name__})"))
                    await asyncio.sleep(0.5)

    async def _ws_talk(self, ws, index: int, until: float) -> None:
        sequence = 0
        while time.monotonic() < until and not self.stopping:
            sequence += 1
            text = f"{index}:{sequence}"
            try:
                await ws.send_str(text)
            except ConnectionResetError:
                pass              # lb closed while we slept: its close frame waits in the reader
            msg = await asyncio.wait_for(ws.receive(), 5)
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data == text:
                self.ws_messages += 1
                await asyncio.sleep(1.0)
                continue
            code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else ws.close_code
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and code == 1001:
                self.ws_events.append((time.monotonic() - self.t0, "going_away", ""))
                return                                  # lb's drain deadline: reconnect
            self.ws_events.append((time.monotonic() - self.t0, "failure",
                                   f"message {text!r} answered with {msg.type.name} {msg.data!r}"))
            return


# -- the deploy, and what a scenario does during it --------------------------------------------

class DeployRun:
    """`lb deploy` as a child process; its JSON events are timed as they arrive."""

    def __init__(self, system: System, t0: float, bake: str, canary_bake: str, nice: int = 0,
                 extra: tuple[str, ...] = ()):
        """`extra`: more `lb deploy` arguments (the skew scenario's browser tabs are a thin load:
        it passes --min-requests 0, for timed bakes as the peers' scripts have)."""
        self.system, self.t0 = system, t0
        self.args = [sys.executable, "-m", "lb.cli", "deploy", *system.deploy_targets, "--to", "v2",
                     "--update", system.update_command(nice), "--batch", "2", "--canary", "1",
                     "--bake", bake, "--canary-bake", canary_bake,
                     "--state", str(system.dir / "deploy.state"), "--log", str(system.dir / "deploy.log"), *extra]
        self.events: list[dict] = []
        self.listeners = []

    async def run(self) -> int:
        proc = await asyncio.create_subprocess_exec(*self.args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            async for line in proc.stdout:
                event = json.loads(line)
                event["at"] = round(time.monotonic() - self.t0, 3)
                self.events.append(event)
                for listener in self.listeners:
                    listener(event)
            self.stderr = (await proc.stderr.read()).decode()
            return await proc.wait()
        finally:
            if proc.returncode is None:           # the bench was stopped: so is the deploy
                await self.stop(proc)

    @staticmethod
    async def stop(proc) -> None:
        """Two SIGTERMs are `lb deploy`'s "stop now" (it stops its update command); SIGKILL after 10 s."""
        for _ in range(2):
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    def switches(self) -> dict[str, list[tuple[float, float]]]:
        """node -> (drain started, up again) from the deploy's step events."""
        out, started = defaultdict(list), {}
        for e in self.events:
            if e["event"] != "step":
                continue
            if e["step"] == "drain" and e["status"] == "start":
                started[e["node"]] = e["at"]
            elif e["step"] == "wait up" and e["status"] == "ok" and e["node"] in started:
                out[e["node"]].append((started.pop(e["node"]), e["at"]))
        for node, at in started.items():
            out[node].append((at, float("inf")))
        return out


def crash_scenario(system: System, deploy: DeployRun, marks: list):
    """SIGKILL the last node of the plan when the first batch after the canary starts."""
    def listener(event):
        if event["event"] == "batch" and event["index"] == 2 and not marks:
            plan = next(e for e in deploy.events if e["event"] == "plan")
            victim = plan["batches"][-1]["nodes"][-1]
            system.kill_backend(victim)
            marks.append({"at": event["at"], "what": f"SIGKILL {victim}", "node": victim})
    return listener


def restart_lb_scenario(system: System, deploy: DeployRun, marks: list):
    """Stop and start lb when the second batch after the canary starts its update."""
    loop = asyncio.get_running_loop()

    def listener(event):
        if event["event"] == "batch" and event["index"] == 3 and not marks:
            marks.append({"at": event["at"], "what": "lb SIGTERM"})
            loop.create_task(restart())

    async def restart():
        await asyncio.to_thread(system.stop_lb)
        marks.append({"at": round(time.monotonic() - deploy.t0, 3), "what": "lb stopped"})
        await asyncio.to_thread(system.start_lb)
        marks.append({"at": round(time.monotonic() - deploy.t0, 3), "what": "lb started"})
    return listener


def upgrade_lb_scenario(system: System, deploy: DeployRun, marks: list):
    """`lb ctl upgrade` when the second batch after the canary starts its update."""
    loop = asyncio.get_running_loop()

    def listener(event):
        if event["event"] == "batch" and event["index"] == 3 and not marks:
            marks.append({"at": event["at"], "what": f"lb upgrade (pid {system.master_pid})"})
            loop.create_task(upgrade())

    async def upgrade():
        reply = await asyncio.to_thread(system.upgrade_lb)
        what = f"new master pid {reply['upgrade']['new_pid']} serves" if reply.get("ok") else \
            f"upgrade failed: {reply.get('error')}"
        marks.append({"at": round(time.monotonic() - deploy.t0, 3), "what": what})
    return listener


SCENARIOS = {"rolling": None, "crash": crash_scenario, "upgrade-lb": upgrade_lb_scenario,
             "restart-lb": restart_lb_scenario, "websocket": None, "fleet": None}


# -- the report ---------------------------------------------------------------------------

def analyse(load: Load, deploy: DeployRun, code: int, phases: dict, marks: list, args) -> dict:
    records = load.records
    failures = Counter(r[2] for r in records if r[2])
    by_phase = {name: [r for r in records if start <= r[0] < end] for name, (start, end) in phases.items()}
    latency = {name: percentiles([r[1] for r in rows]) for name, rows in by_phase.items()}
    failed_by_phase = {name: Counter(r[2] for r in rows if r[2]) for name, rows in by_phase.items()}
    steady_p99 = percentiles([r[1] for r in by_phase["before"] + by_phase["after"]]).get("p99_ms")
    flips, forward = version_moves(records)
    during_p99 = latency["during"].get("p99_ms")
    ws = Counter(kind for _, kind, _ in load.ws_events)
    return {
        "bench": "deploy_under_load", "scenario": args.scenario, "lbs": args.lbs, "store": args.store,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "update_nice": args.update_nice,
        "load": {"sessions": args.sessions, "rate_per_s": args.rate, "steady_s": args.steady,
                 "user_life_requests": args.life,
                 "client": "aiohttp, open loop, latency from the scheduled send time"},
        "direct_baseline": getattr(args, "direct", None),
        "deploy": {"exit": code, "seconds": round(phases["during"][1] - phases["during"][0], 1),
                   "batches": [e["nodes"] for e in deploy.events if e["event"] == "batch"],
                   "result": (deploy.events[-1] if deploy.events else {}).get("result"),
                   "bakes": [{k: e.get(k) for k in ("nodes", "ok", "requests", "error_rate", "p99_ms",
                                                     "baseline_p99_ms", "p99_note", "reasons")}
                             for e in deploy.events if e["event"] == "baked"]},
        "marks": marks,
        "requests": len(records), "failed": sum(failures.values()), "failed_by_reason": dict(failures),
        "failed_by_phase": {k: dict(v) for k, v in failed_by_phase.items()},
        "sessions_with_backward_flip": len(flips), "backward_flips": sum(flips.values()),
        "forward_moves": forward,
        "latency": latency, "steady_p99_ms": steady_p99,
        "p99_during_over_steady": round(during_p99 / steady_p99, 2) if during_p99 and steady_p99 else None,
        "max_node_share": max_node_share(records, deploy.switches(), marks, args.slow_start_s),
        "websocket": {"sessions": WS_SESSIONS, "messages_echoed": load.ws_messages,
                      "closed_1001_and_reconnected": ws.get("going_away", 0),
                      "failures": ws.get("failure", 0),
                      "failure_samples": [d for _, k, d in load.ws_events if k == "failure"][:5]}
        if args.scenario == "websocket" else None,
        "timeline": timeline(records, load.lag),
    }


def version_moves(records) -> tuple[Counter, int]:
    """Backward flips per session (an older version after a newer one), and forward moves."""
    rank = {v: i for i, v in enumerate(VERSIONS)}
    last: dict[int, str] = {}
    flips: Counter = Counter()
    forward = 0
    for _, _, reason, version, _, session in sorted(records):
        if reason or version is None:
            continue
        previous = last.get(session)
        if previous is not None and rank[version] < rank[previous]:
            flips[session] += 1
        elif previous is not None and rank[version] > rank[previous]:
            forward += 1
        last[session] = version if previous is None else max(previous, version, key=rank.get)
    return flips, forward


def max_node_share(records, switches, marks, slow_start_s: float) -> dict:
    """The worst 1 s window: a node's requests over the mean of the nodes in full service
    all window long (a node switching, in its slow-start ramp, or crashed counts in neither)."""
    crashed = {m["node"]: m["at"] for m in marks if m.get("node")}
    windows: dict[int, Counter] = defaultdict(Counter)
    for at, _, reason, _, node, _ in records:
        if not reason:
            windows[int(at)][node] += 1
    worst, where, detail = 0.0, None, None
    for second, counts in sorted(windows.items())[:-1]:
        start, end = second, second + 1
        steady = {n: c for n, c in counts.items()
                  if not any(s < end and e + slow_start_s > start for s, e in switches.get(n, ()))
                  and not (n in crashed and crashed[n] < end)}
        if len(steady) >= 2:
            ratio = max(steady.values()) / (sum(steady.values()) / len(steady))
            if ratio > worst:
                worst, where, detail = ratio, second, dict(sorted(counts.items()))
    return {"ratio": round(worst, 2), "at_s": where, "that_second": detail}


def timeline(records, lag: dict) -> list[dict]:
    seconds: dict[int, dict] = defaultdict(lambda: {"v1": 0, "v2": 0, "failed": 0, "latencies": []})
    for at, latency, reason, version, _, _ in records:
        row = seconds[int(at)]
        if reason:
            row["failed"] += 1
        else:
            row[version] += 1
        row["latencies"].append(latency)
    out = []
    for second in sorted(seconds):
        row = seconds[second]
        out.append({"t": second, "v1": row["v1"], "v2": row["v2"], "failed": row["failed"],
                    "p99_ms": percentiles(row["latencies"]).get("p99_ms"),
                    "client_lag_ms": round(lag.get(second, 0.0) * 1000, 1)})
    return out


def picture(report: dict, events: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["timeline"]
    t = [r["t"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    top.plot(t, [r["v1"] for r in rows], label="v1 req/s")
    top.plot(t, [r["v2"] for r in rows], label="v2 req/s")
    top.plot(t, [r["failed"] for r in rows], label="failed/s", color="red")
    top.set_ylabel("requests per second")
    top.legend(loc="center right")
    bottom.plot(t, [r["p99_ms"] for r in rows], label="p99 per second", color="purple")
    bottom.plot(t, [r["client_lag_ms"] for r in rows], label="load generator's own stall", color="grey")
    bottom.legend(loc="upper right")
    bottom.set_ylabel("p99 ms")
    bottom.set_xlabel("seconds")
    for e in events:
        if e["event"] == "batch":
            for axis in (top, bottom):
                axis.axvline(e["at"], color="grey", linestyle=":", linewidth=1)
            top.annotate(f"b{e['index']}", (e["at"], top.get_ylim()[1] * 0.95), fontsize=7)
    for mark in report["marks"]:
        for axis in (top, bottom):
            axis.axvline(mark["at"], color="red", linestyle="--", linewidth=1)
    top.set_title(f"lb deploy v1 -> v2 under {report['load']['rate_per_s']} req/s, scenario "
                  f"{report['scenario']}: {report['failed']} failed of {report['requests']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# -- main ---------------------------------------------------------------------------------

async def direct_baseline(system: System, args) -> dict:
    """The same load straight to the backends (slot i to backend i mod 10): what the
    machine, the client and the Python backends cost without lb."""
    load = Load("", args.sessions, args.rate)
    load.t0 = time.monotonic() + 0.5
    until = load.t0 + args.baseline
    urls = [f"http://127.0.0.1:{system.ports[n]}" for n in system.names]
    await asyncio.gather(*(load.run_http(i, until, urls[i % len(urls)]) for i in range(args.sessions)))
    return {"seconds": args.baseline, **percentiles([r[1] for r in load.records if r[0] >= 1.0]),
            "failed": sum(1 for r in load.records if r[2])}


async def scenario_run(system: System, args) -> dict:
    if args.baseline:
        args.direct = await direct_baseline(system, args)
    load = Load([f"http://127.0.0.1:{port}" for port in system.lb_ports], args.sessions, args.rate, args.life)
    load.t0 = t0 = time.monotonic() + 0.5
    far = t0 + 3600
    tasks = [asyncio.create_task(load.run_http(i, far)) for i in range(args.sessions)]
    tasks.append(asyncio.create_task(load.watch_lag(far)))
    if args.scenario == "websocket":
        tasks += [asyncio.create_task(load.run_ws(i, far)) for i in range(WS_SESSIONS)]
    await asyncio.sleep(0.5 + args.steady)
    deploy = DeployRun(system, t0, args.bake, args.canary_bake, args.update_nice)
    marks: list[dict] = []
    hook = SCENARIOS[args.scenario]
    if hook:
        deploy.listeners.append(hook(system, deploy, marks))
    deploy_start = time.monotonic() - t0
    code = await deploy.run()
    deploy_end = time.monotonic() - t0
    await asyncio.sleep(args.steady)
    load.stopping = True
    await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 5)
    phases = {"before": (0.0, deploy_start), "during": (deploy_start, deploy_end),
              "after": (deploy_end, deploy_end + args.steady)}
    report = analyse(load, deploy, code, phases, marks, args)
    report["deploy"]["stderr_tail"] = deploy.stderr.splitlines()[-16:]
    report["requests_per_lb"] = {str(path.name): request(str(path), "show stats")["stats"]["totals"]["requests"]
                                 for path in system.sockets}
    report["deploy_events"] = deploy.events
    return report


def main() -> int:
    import skew_run               # here, not above: it imports this module (bench/skew_run.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted([*SCENARIOS, "skew"]), default="rolling")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--steady", type=float, default=10.0)
    parser.add_argument("--life", type=int, default=100,
                        help="requests before a user leaves and a new one takes its slot (0: never)")
    parser.add_argument("--baseline", type=float, default=5.0,
                        help="seconds of the same load straight to the backends first (0: none)")
    parser.add_argument("--bake", default="10s")
    parser.add_argument("--canary-bake", default="30s")
    parser.add_argument("--tag", help="suffix of the result files (run number)")
    parser.add_argument("--workers", type=int, help="lb's worker processes (default: the config's, auto)")
    parser.add_argument("--update-nice", type=int, default=0,
                        help="run the update command under nice -n N (default 0: as is)")
    parser.add_argument("--lbs", type=int, help="lbs in the fleet (the fleet scenario; default 2 there, else 1)")
    parser.add_argument("--store", choices=["etcd"], help="the fleet scenario in cluster mode over etcd")
    skew_run.add_arguments(parser)
    args = parser.parse_args()
    if args.lbs is None:
        args.lbs = 2 if args.scenario == "fleet" else 1
    if args.lbs < 1 or (args.scenario == "fleet") != (args.lbs > 1):
        parser.error("--lbs: 2 or more with --scenario fleet, 1 with any other scenario")
    if args.store and args.scenario != "fleet":
        parser.error("--store: with --scenario fleet only")
    become_subreaper()                # an upgraded lb's new master stays ours to stop and reap
    if args.scenario == "skew":
        return skew_run.run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.scenario + (f"-{args.tag}" if args.tag else "")
    workdir = Path(tempfile.mkdtemp(prefix="lb-proof-", dir="/tmp"))
    system = System(workdir, args.scenario, args.workers, args.lbs, store=args.store)
    args.slow_start_s = system.slow_start_s
    try:
        system.start()
        report = run_async(scenario_run(system, args))
    finally:
        system.stop()
    report["workdir"] = str(workdir)
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    drew = picture(report, report["deploy_events"], RESULTS / f"{stem}.png")
    summarize(report, out, drew)
    return 0


def summarize(report: dict, out: Path, drew: bool) -> None:
    lat = report["latency"]
    print(f"{report['scenario']}: deploy exit {report['deploy']['exit']} in {report['deploy']['seconds']}s; "
          f"{report['requests']} requests, {report['failed']} failed {report['failed_by_reason'] or ''}; "
          f"backward flips {report['backward_flips']} ({report['sessions_with_backward_flip']} sessions), "
          f"forward moves {report['forward_moves']}")
    for phase in ("before", "during", "after"):
        row = lat[phase]
        print(f"  {phase:<7} {row.get('count', 0):6d} requests  p50 {row.get('p50_ms')} ms  p90 {row.get('p90_ms')} ms  "
              f"p99 {row.get('p99_ms')} ms  max {row.get('max_ms')} ms")
    if report.get("direct_baseline"):
        base = report["direct_baseline"]
        print(f"  direct to the backends, no lb: p50 {base.get('p50_ms')} ms  p99 {base.get('p99_ms')} ms  "
              f"max {base.get('max_ms')} ms")
    if report["lbs"] > 1:
        print(f"  requests per lb (lb's own count): {report['requests_per_lb']}")
    print(f"  p99 during / steady: {report['p99_during_over_steady']}; worst 1 s node share "
          f"{report['max_node_share']['ratio']} x fair; marks: {[m['what'] for m in report['marks']]}")
    if report.get("websocket"):
        print(f"  websocket: {report['websocket']}")
    print(f"written: {out}" + (f" and {out.with_suffix('.png')}" if drew else " (no matplotlib: no picture)"))


if __name__ == "__main__":
    sys.exit(main())
