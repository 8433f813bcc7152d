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

`--bad` deploys a v2 that answers 500 to 10 % of requests: the canary's bake
catches it and the deploy rolls back.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

import h11

from ..core.errors import ConfigError
from ..files import load_config
from .backend import start_detached, stop_pidfile

THINK_S = 0.01
USER_LIFE = (20, 60)           # requests before a user leaves and a new one comes
STEADY_S = 5.0


class Users:
    """Keep-alive users with their own cookie; counts what they see, phase by phase."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.phase = "before"
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.failures: Counter = Counter()           # reason -> count
        self.statuses: Counter = Counter()
        self.flips = 0                               # users who saw v2 and then v1
        self.users = 0
        self.stopping = False

    async def slot(self) -> None:
        while not self.stopping:
            self.users += 1
            await self.user(random.randint(*USER_LIFE))

    async def user(self, requests: int) -> None:
        cookie, seen = None, []
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.failures["connect"] += 1
            await asyncio.sleep(0.2)
            return
        try:
            conn = h11.Connection(h11.CLIENT)
            for _ in range(requests):
                if self.stopping:
                    return
                cookie = await self.request(conn, reader, writer, cookie, seen)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return                   # lb closed the connection: this user leaves
                conn.start_next_cycle()
                await asyncio.sleep(THINK_S)
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            self.failures[type(exc).__name__] += 1
        finally:
            writer.close()
            if "v2" in seen and "v1" in seen[seen.index("v2"):]:
                self.flips += 1

    async def request(self, conn, reader, writer, cookie, seen):
        headers = [("Host", f"{self.host}:{self.port}"), ("User-Agent", "lb-demo")]
        if cookie:
            headers.append(("Cookie", cookie))
        started = time.monotonic()
        writer.write(conn.send(h11.Request(method="GET", target="/", headers=headers)))
        writer.write(conn.send(h11.EndOfMessage()))
        response, body = await self.response(conn, reader)
        self.latencies[self.phase].append((time.monotonic() - started) * 1000)
        self.statuses[response.status_code] += 1
        for name, value in response.headers:
            if name == b"set-cookie" and value.startswith(b"lb_version="):
                cookie = value.split(b";", 1)[0].decode()
        if response.status_code == 200:
            seen.append(json.loads(body)["version"])
        else:
            self.failures[f"status {response.status_code}"] += 1
        return cookie

    @staticmethod
    async def response(conn, reader):
        response, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    raise ConnectionResetError("lb closed the connection")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return response, body


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _spawn(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lb.cli", *args], **kwargs)


async def _wait_port(host: str, port: int, proc: subprocess.Popen, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} (exit code {proc.poll()})")


async def _steady(users: Users, seconds: float) -> None:
    """Print a line a second while nothing else owns the terminal."""
    started, last = time.monotonic(), sum(users.statuses.values())
    while time.monotonic() - started < seconds:
        await asyncio.sleep(1)
        done = sum(users.statuses.values())
        recent = users.latencies[users.phase][-(done - last) or -1:]
        print(f"  {users.phase:<7} {done - last:5d} req/s  failed {sum(users.failures.values())}  "
              f"p99 {_percentile(recent, 0.99):6.1f} ms", flush=True)
        last = done


class Demo:
    def __init__(self, config_path: str | None, bad: bool):
        self.config_path = config_path
        self.config = load_config(config_path)
        self.bad = bad
        self.run_dir = self.config.resolve("run")
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
    host, port = demo.config.listen[0]
    await _wait_port(host, port, demo.lb)
    print(f"demo: {len(demo.config.backends)} backends (v1) and lb on {host}:{port}; {users_count} users "
          f"at a time, each leaving after {USER_LIFE[0]}-{USER_LIFE[1]} requests; access log "
          f"{demo.access_path}", flush=True)
    users = Users(host, port)
    slots = [asyncio.create_task(users.slot()) for _ in range(users_count)]
    await _steady(users, STEADY_S)
    release = "v2 with 10% of requests answered 500" if demo.bad else "v2"
    print(f"demo: lb deploy --to v2 (canary 1, then 3 at a time), the update command restarts each "
          f"node as {release}", flush=True)
    users.phase = "during"
    started = time.monotonic()
    code = await demo.deploy()
    deploy_s = time.monotonic() - started
    users.phase = "after"
    await _steady(users, STEADY_S)
    users.stopping = True
    await asyncio.wait(slots, timeout=15)
    return _summary(users, code, deploy_s, demo.bad)


def _summary(users: Users, code: int, deploy_s: float, bad: bool) -> int:
    total = sum(users.statuses.values())
    app_errors = users.statuses.get(500, 0)
    failed = sum(users.failures.values())
    print(f"\ndemo summary: deploy exit {code} in {deploy_s:.0f}s; {total} requests by {users.users} users, "
          f"{failed} failed, {users.flips} users sent back from v2 to v1")
    for phase in ("before", "during", "after"):
        values = users.latencies[phase]
        print(f"  {phase:<7} {len(values):6d} requests  p50 {_percentile(values, 0.5):5.1f} ms  "
              f"p99 {_percentile(values, 0.99):6.1f} ms")
    if bad:
        print(f"  {app_errors} of the failures are the bad release's own 500s, served to the canary's "
              f"users before the bake caught it; the rest of the failures: {failed - app_errors}")
        return 0 if code == 1 and failed == app_errors else 1
    return 0 if code == 0 and failed == 0 and users.flips == 0 else 1


def run_demo(args) -> int:
    from ..cli import run_async
    try:
        demo = Demo(args.config, args.bad)
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
