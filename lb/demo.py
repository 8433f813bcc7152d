"""`lb demo`: 10 backends + lb on the embedded config + live traffic, with a report.

Starts one `lb backend` process per backend of the config (all v1), `lb serve`
on the same config, and a load of keep-alive sessions (an h11 client, not lb's
own parser code). Prints a line a second and a summary, then stops everything
it started, also on Ctrl-C. The rolling deploy joins this scenario with the
deploy issue.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import h11

from .config import ConfigError, load_config

SESSIONS = 20
THINK_S = 0.01


class Load:
    """Keep-alive sessions that count what they see."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.statuses: Counter = Counter()
        self.nodes: Counter = Counter()
        self.failures: Counter = Counter()
        self.latencies_ms: list[float] = []
        self.stopping = False

    async def session(self) -> None:
        while not self.stopping:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.failures["connect"] += 1
                await asyncio.sleep(0.2)
                continue
            try:
                await self._requests(reader, writer)
            except (OSError, h11.ProtocolError, asyncio.IncompleteReadError) as exc:
                self.failures[type(exc).__name__] += 1
            finally:
                writer.close()

    async def _requests(self, reader, writer) -> None:
        conn = h11.Connection(h11.CLIENT)
        while not self.stopping:
            started = time.monotonic()
            writer.write(conn.send(h11.Request(method="GET", target="/", headers=[
                ("Host", f"{self.host}:{self.port}"), ("User-Agent", "lb-demo")])))
            writer.write(conn.send(h11.EndOfMessage()))
            status, body = await self._response(conn, reader)
            self.latencies_ms.append((time.monotonic() - started) * 1000)
            self.statuses[status] += 1
            if status == 200:
                self.nodes[json.loads(body)["node"]] += 1
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
            await asyncio.sleep(THINK_S)

    @staticmethod
    async def _response(conn, reader) -> tuple[int, bytes]:
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    raise ConnectionResetError("lb closed the connection")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body


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


async def _demo(config_path: str, seconds: float, procs: list[subprocess.Popen]) -> int:
    config = load_config(config_path)
    run_dir = config.resolve("run")
    os.makedirs(run_dir, exist_ok=True)
    for backend in config.backends:
        procs.append(_spawn(["backend", "--listen", f"{backend.host}:{backend.port}",
                             "--version", backend.version, "--name", backend.name],
                            stdout=subprocess.DEVNULL))
    for backend, proc in zip(config.backends, procs):
        await _wait_port(backend.host, backend.port, proc)
    access_path = os.path.join(run_dir, "demo-access.log")
    with open(access_path, "wb") as access:
        procs.append(_spawn(["serve", "-c", config_path], stdout=access))
    host, port = config.listen[0]
    await _wait_port(host, port, procs[-1])
    print(f"demo: {len(config.backends)} backends and lb on {host}:{port}; "
          f"{SESSIONS} keep-alive sessions for {seconds:.0f}s (access log: {access_path})")
    load = Load(host, port)
    sessions = [asyncio.create_task(load.session()) for _ in range(SESSIONS)]
    started = time.monotonic()
    last = 0
    while time.monotonic() - started < seconds:
        await asyncio.sleep(1)
        done = sum(load.statuses.values())
        print(f"  {time.monotonic() - started:4.0f}s  {done - last:5d} req/s  "
              f"failed {sum(load.failures.values()) + sum(n for s, n in load.statuses.items() if s != 200)}  "
              f"p99 {_percentile(load.latencies_ms[-(done - last) or -1:], 0.99):6.1f} ms  "
              f"backends seen {len(load.nodes)}", flush=True)
        last = done
    load.stopping = True
    await asyncio.wait(sessions, timeout=5)
    total = sum(load.statuses.values())
    failed = sum(load.failures.values()) + sum(n for s, n in load.statuses.items() if s != 200)
    print(f"demo summary: {total} requests, {failed} failed, "
          f"p50 {_percentile(load.latencies_ms, 0.5):.1f} ms, p99 {_percentile(load.latencies_ms, 0.99):.1f} ms")
    print("  per backend: " + ", ".join(f"{n}={c}" for n, c in sorted(load.nodes.items())))
    return 0 if failed == 0 and total > 0 else 1


def run_demo(args) -> int:
    from .cli import run_async
    procs: list[subprocess.Popen] = []
    try:
        return run_async(_demo(args.config, args.seconds, procs))
    except ConfigError as exc:
        print(f"lb demo: {exc.message}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"lb demo: {exc} (is another demo running?)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lb demo: interrupted", file=sys.stderr)
        return 130
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
