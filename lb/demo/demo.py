"""`lb demo`: 10 backends + lb + cookie-keeping users + a real v1 -> v2 rolling deploy.

Starts one `lb backend` per backend of the config (v1, detached, with pidfiles,
the way the deploy's update command restarts them), `lb serve` on the config
(from a fresh state), and users that keep their cookie and leave after a few
dozen requests while new ones arrive (an h11 client, not lb's own code). After
a few steady seconds it runs `lb deploy --to v2` as a user would, whose update
command stops a node's backend and starts it as v2 with a 1 s warmup; the
deploy's own live view shows while it runs. Then a summary: requests served,
failed, backward version flips, latency before / during / after. Everything it
started is stopped at the end, also on Ctrl-C.

`--bad` deploys a v2 that answers 500 to 10 % of requests, with a gate: a `--verify`
smoke test (`smoke`: 100 requests to the node itself, at most 1 may fail) that runs while
the canary is up at weight 0, before any user meets it; it fails, and the deploy rolls back.

`--port-base N` runs the demo on other ports than the embedded config's (8080,
9900, 9001-9010, which something else may hold): lb on N, /metrics on N+1, the
backends on N+2 and up, from a copy of that config written to ./run/. A config of
one's own (`-c FILE`) names its ports itself.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import sys
import time

import yaml

from ..core.errors import ConfigError
from ..files import atomic_write, embedded_config_text, load_config
from ..loop import run_async
from .backend import start_detached, stop_pidfile
from .users import Users

THINK_S = 0.01
USER_LIFE = (20, 60)           # requests before a user leaves and a new one comes
STEADY_S = 5.0
SMOKE_REQUESTS = 100
SMOKE_ALLOWED_FAILURES = 1      # a 10% failure rate passes 100 requests with at most 1 failure 0.03% of the time


def smoke(host: str | None = None, port: int | None = None) -> int:
    """`lb demo --bad`'s --verify: GET / on the node ($LB_HOST:$LB_PORT) SMOKE_REQUESTS times;
    exit status 1 when more than SMOKE_ALLOWED_FAILURES answer other than 200."""
    host, port = host or os.environ["LB_HOST"], port or int(os.environ["LB_PORT"])
    failed = 0
    conn = http.client.HTTPConnection(host, port, timeout=5)
    for _ in range(SMOKE_REQUESTS):
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            failed += response.status != 200
        except OSError:
            failed += 1
            conn.close()
    conn.close()
    print(f"smoke test of {os.environ.get('LB_NODE', host)} ({os.environ.get('LB_VERSION', '?')}): "
          f"{failed} of {SMOKE_REQUESTS} requests failed, {SMOKE_ALLOWED_FAILURES} allowed", flush=True)
    return 1 if failed > SMOKE_ALLOWED_FAILURES else 0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _spawn(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lb.cli", *args], **kwargs)


async def _wait_ready(host: str, port: int, admin_socket: str, proc: subprocess.Popen,
                      timeout_s: float = 15) -> None:
    """Until lb's admin socket accepts a connection (lb shows it once its workers serve; a
    stale file from a killed lb refuses) and its port answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            _, writer = await asyncio.open_unix_connection(admin_socket)
            writer.close()
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"lb is not serving on {host}:{port} with admin socket {admin_socket} "
                       f"(exit code {proc.poll()}; see {os.path.dirname(admin_socket)} and the demo log)")


async def _steady(users: Users, seconds: float) -> None:
    """Print a line a second while nothing else owns the terminal."""
    started, last = time.monotonic(), users.requests
    while time.monotonic() - started < seconds:
        await asyncio.sleep(1)
        done = users.requests
        recent = [r.latency_s * 1000 for r in users.records[last:done]]
        print(f"  {users.phase:<7} {done - last:5d} req/s  failed {len(users.failures)}  "
              f"p99 {_percentile(recent, 0.99):6.1f} ms", flush=True)
        last = done


def moved_config(port_base: int, run_dir: str) -> str:
    """The embedded config with its ports moved to `port_base` and up, written to `run_dir`
    (its admin socket and state file made absolute, where the embedded config keeps them:
    the copy's own folder is not the one they are relative to). Its path. Raises
    ConfigError for a base whose ports do not fit below 65536."""
    raw = yaml.safe_load(embedded_config_text())
    highest = 65535 - 1 - len(raw["backends"])
    if not 1 <= port_base <= highest:
        raise ConfigError(f"--port-base: expected a port from 1 to {highest} (lb, then /metrics and "
                          f"{len(raw['backends'])} backends above it), got {port_base}")
    raw["listen"] = f"127.0.0.1:{port_base}"
    raw["metrics"] = {"listen": f"127.0.0.1:{port_base + 1}"}
    for i, backend in enumerate(raw["backends"]):
        backend["address"] = f"127.0.0.1:{port_base + 2 + i}"
    raw["admin"]["socket"] = os.path.join(run_dir, os.path.basename(raw["admin"]["socket"]))
    raw["state_file"] = os.path.join(run_dir, os.path.basename(raw["state_file"]))
    path = os.path.join(run_dir, f"demo-{port_base}.yaml")
    atomic_write(path, f"# lb demo --port-base {port_base}: the embedded config on other ports\n"
                 + yaml.safe_dump(raw, sort_keys=False), mode=0o644)
    return path


class Demo:
    def __init__(self, config_path: str | None, bad: bool, port_base: int | None = None):
        if port_base is not None:
            if config_path is not None:
                raise ConfigError("--port-base moves the embedded config's ports; with -c FILE, "
                                  "set the ports in FILE")
            config_path = moved_config(port_base, os.path.abspath("run"))
        self.config_path = config_path
        self.config = load_config(config_path)
        self.bad = bad
        self.run_dir = os.path.abspath("run") if port_base is not None else self.config.resolve("run")
        self.pid_dir = os.path.join(self.run_dir, "demo")
        self.lb: subprocess.Popen | None = None

    def update_command(self, extra: str) -> str:
        return (f"{sys.executable} -m lb.cli backend --listen {{host}}:{{port}} --version {{version}} "
                f"--name {{name}} --warmup 1 --pidfile {self.pid_dir}/{{name}}.pid --replace --detach "
                f"--log {self.pid_dir}/{{name}}.log {extra}").strip()

    def start(self) -> None:
        os.makedirs(self.pid_dir, exist_ok=True)
        for stale in (self.config.resolve(self.config.state_file), os.path.join(self.run_dir, "demo-deploy.state")):
            if os.path.exists(stale):
                os.unlink(stale)             # the demo starts from a fresh state
        for b in self.config.backends:
            start_detached(["--listen", f"{b.host}:{b.port}", "--version", b.version, "--name", b.name],
                           os.path.join(self.pid_dir, f"{b.name}.pid"), os.path.join(self.pid_dir, f"{b.name}.log"))
        self.access_path = os.path.join(self.run_dir, "demo-access.log")
        with open(self.access_path, "wb") as access, \
                open(os.path.join(self.run_dir, "demo-lb.log"), "wb") as log:
            config_args = ["-c", self.config_path] if self.config_path else []
            self.lb = _spawn(["serve", *config_args], stdout=access, stderr=log)

    async def deploy(self) -> int:
        args = ["deploy", "-s", self.config.resolve(self.config.admin.socket), "--to", "v2",
                "--update", self.update_command("--fail-rate 0.1" if self.bad else ""),
                "--rollback", self.update_command(""), "--batch", "3", "--canary", "1", "--min-ready", "70%",
                "--bake", "5s", "--canary-bake", "10s",
                *(["--verify", f"{sys.executable} -c 'import sys, lb.demo.demo as d; sys.exit(d.smoke())'"]
                  if self.bad else []),
                "--state", os.path.join(self.run_dir, "demo-deploy.state"),
                "--log", os.path.join(self.run_dir, "demo-deploy.log")]
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "lb.cli", *args)
        return await proc.wait()

    def stop(self) -> None:
        if self.lb is not None and self.lb.poll() is None:
            self.lb.send_signal(signal.SIGTERM)
            try:
                self.lb.wait(15)
            except subprocess.TimeoutExpired:
                self.lb.kill()
        for b in self.config.backends:
            stop_pidfile(os.path.join(self.pid_dir, f"{b.name}.pid"))


async def _run(demo: Demo, users_count: int) -> int:
    demo.start()
    host, port = demo.config.listen[0].address
    await _wait_ready(host, port, demo.config.resolve(demo.config.admin.socket), demo.lb)
    print(f"demo: {len(demo.config.backends)} backends (v1) and lb on {host}:{port}; {users_count} users "
          f"at a time, each leaving after {USER_LIFE[0]}-{USER_LIFE[1]} requests; access log "
          f"{demo.access_path}", flush=True)
    if demo.config.status.enabled and demo.config.metrics.listen is not None:
        status_host, status_port = demo.config.metrics.listen
        print(f"demo: watch it live at http://{status_host}:{status_port}/status", flush=True)
    users = Users(host, port, slots=users_count, life=USER_LIFE, think_s=THINK_S)
    users.phase = "before"
    users.start()
    await _steady(users, STEADY_S)
    release = ("v2 with 10% of requests answered 500, and a --verify smoke test of each node before it takes "
               "users" if demo.bad else "v2")
    print(f"demo: lb deploy --to v2 (canary 1, then 3 at a time), the update command restarts each "
          f"node as {release}", flush=True)
    users.phase = "during"
    started = time.monotonic()
    code = await demo.deploy()
    deploy_s = time.monotonic() - started
    users.phase = "after"
    await _steady(users, STEADY_S)
    await users.stop()
    return _summary(users, code, deploy_s, demo.bad)


def _summary(users: Users, code: int, deploy_s: float, bad: bool) -> int:
    total = users.requests
    app_errors = sum(1 for r in users.records if r.status == 500)
    failed = len(users.failures)
    flips = len(users.backward_flips(["v1", "v2"]))
    print(f"\ndemo summary: deploy exit {code} in {deploy_s:.0f}s; {total} requests by {users.users} users, "
          f"{failed} failed, {flips} users sent back from v2 to v1")
    for phase in ("before", "during", "after"):
        values = [r.latency_s * 1000 for r in users.records if r.phase == phase]
        print(f"  {phase:<7} {len(values):6d} requests  p50 {_percentile(values, 0.5):5.1f} ms  "
              f"p99 {_percentile(values, 0.99):6.1f} ms")
    if bad:
        print(f"  {app_errors} of the failures are the bad release's own 500s served to users (the smoke test "
              f"failed the canary before it took any); the rest of the failures: {failed - app_errors}")
        return 0 if code == 1 and failed == app_errors else 1
    return 0 if code == 0 and failed == 0 and flips == 0 else 1


def run_demo(args) -> int:
    try:
        demo = Demo(args.config, args.bad, args.port_base)
    except ConfigError as exc:
        print(f"lb demo: {exc.message}", file=sys.stderr)
        return 2
    try:
        return run_async(_run(demo, args.users))
    except RuntimeError as exc:
        print(f"lb demo: {exc} (is another demo running?)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lb demo: interrupted", file=sys.stderr)
        return 130
    finally:
        demo.stop()
