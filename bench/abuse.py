"""Abuse, side by side: what hostile clients and a hostile backend do to normal users.

    .venv/bin/python bench/abuse.py [--seconds 20] [--attacks slowloris,slow_body,...]
        [--proxies lb,haproxy] [--backends 4] [--users 20] [--newconn 4] [--tag T]

The same `lb backend` processes (v1) sit behind lb (one worker) and behind HAProxy (one
thread, timeouts set like lb's defaults: 10 s for a request head, 60 s idle, 1 h
tunnels, leastconn, backend keep-alive). For each phase, lb and then HAProxy, each
freshly started (no phase inherits another's memory):

  users     --users keep-alive users (one connection each, cookies kept, 50 ms
            think time; a user leaves after 50 requests and a new one connects)
            and --newconn clients that open a new connection for every request
            (an attack that blocks accepting hides behind connected users).
            They run in their own process, from 3 s before the phase (not
            measured) to its end; every request's start, latency and outcome is
            recorded. A failure is a connection
            error, a timeout (10 s), a closed connection or a status other than 200.
  quiet     --seconds of users alone: the baseline.
  attacks   each for --seconds, in its own process, then a 5 s settle (the
            settle counts toward the attack: a failure it causes late is its own):
    slowloris      1,000 connections each sending a header line every 2 s
    slow_body      200 POSTs announcing 1 GB, sending 1 byte every 2 s
    slow_reader    500 clients asking for 100 MiB and never reading
    pipeline_flood 200 connections writing pipelined GETs until the proxy stops
                   reading (256 KiB at a time), never reading a response
    trailer_flood  50 connections sending a chunked body's last chunk, then
                   endless 1 KiB trailer lines
    big_head       20 clients asking for /headers?kib=256: the backend answers
                   with a 256 KiB response head (the proxy must refuse it, 502)
    idle_conns     8,000 connections that never send a byte
    idle_ws        2,000 WebSockets opened through the proxy, then idle
    Connections the proxy closes are opened again, so the attack holds for its
    whole length.

Measured per phase: the users' requests, failures, p50/p99 (keep-alive users and
new-connection clients apart), the proxy's peak RSS (lb: its master and worker summed) (VmHWM after resetting it
through /proc/PID/clear_refs at the phase start, and VmRSS sampled every 50 ms),
its peak anonymous memory (RssAnon: the heap, without the mapped executable and
libraries), its CPU (utime+stime over the phase, as % of one core), the bytes it wrote (/proc/PID/io wchar), and what the
attacker saw (connections, statuses). Writes bench/results/abuse[-T].json and
prints a table with lb/HAProxy ratios. HAProxy comes from bench/setup.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import throughput  # noqa: E402  (bench/ is this script's directory)
from throughput import cpu_seconds, free_port, wait_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ATTACKS = ("slowloris", "slow_body", "slow_reader", "pipeline_flood", "trailer_flood", "big_head",
           "idle_conns", "idle_ws")
SETTLE_S = 5.0
WARMUP_S = 3.0
REQUEST_TIMEOUT_S = 10.0
THINK_S = 0.05
USER_LIFE = 50


# -- the users (their own process) ------------------------------------------------------

def run_users(args) -> int:
    """Keep-alive users and new-connection clients until SIGTERM; then the records as JSON."""
    import h11

    from lb.demo.users import Closed, Connection

    records: list[tuple[float, float, str, int]] = []      # (sent, latency_s, kind, status)
    failures: list[tuple[float, str, str]] = []            # (sent, kind, what)
    stop = asyncio.Event()
    host = "127.0.0.1"

    async def request(conn: Connection, headers: list, kind: str, sent: float) -> tuple:
        response, body = await conn.request("/", headers, REQUEST_TIMEOUT_S)
        records.append((sent, time.monotonic() - sent, kind, response.status_code))
        if response.status_code != 200:
            failures.append((sent, kind, f"status {response.status_code}"))
        return response

    async def keepalive_user() -> None:
        while not stop.is_set():
            cookie, conn, sent = None, None, time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, args.port), REQUEST_TIMEOUT_S)
                conn = Connection(reader, writer)
                for _ in range(USER_LIFE):
                    if stop.is_set():
                        break
                    headers = [("Host", "lb.test"), ("User-Agent", "abuse-users")]
                    if cookie:
                        headers.append(("Cookie", cookie))
                    sent = time.monotonic()
                    response = await request(conn, headers, "keepalive", sent)
                    for name, value in response.headers:
                        if name == b"set-cookie" and value.startswith(b"lb_version="):
                            cookie = value.split(b";", 1)[0].decode()
                    if not conn.next_cycle():
                        raise Closed("the proxy ended the connection (Connection: close)")
                    await asyncio.sleep(THINK_S)
            except (Closed, OSError, h11.ProtocolError, asyncio.TimeoutError, ValueError) as exc:
                failures.append((sent, "keepalive", f"{type(exc).__name__}: {exc}"))
                await asyncio.sleep(THINK_S)
            finally:
                if conn is not None:
                    conn.close()

    async def newconn_client() -> None:
        while not stop.is_set():
            sent, conn = time.monotonic(), None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, args.port), REQUEST_TIMEOUT_S)
                conn = Connection(reader, writer)
                await request(conn, [("Host", "lb.test"), ("Connection", "close")], "newconn", sent)
            except (Closed, OSError, h11.ProtocolError, asyncio.TimeoutError, ValueError) as exc:
                failures.append((sent, "newconn", f"{type(exc).__name__}: {exc}"))
            finally:
                if conn is not None:
                    conn.close()
            await asyncio.sleep(THINK_S)

    async def main() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tasks = [asyncio.create_task(keepalive_user()) for _ in range(args.users)]
        tasks += [asyncio.create_task(newconn_client()) for _ in range(args.newconn)]
        await stop.wait()
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 1)
        for task in tasks:
            task.cancel()

    _run(main())
    Path(args.out).write_text(json.dumps({"records": records, "failures": failures}))
    return 0


def _run(coro) -> None:
    try:
        import uvloop
        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


# -- the attacks (their own process) ------------------------------------------------------

class Attack:
    """One attack against 127.0.0.1:port for `seconds`; counts what it saw."""

    def __init__(self, port: int, seconds: float):
        self.port, self.seconds = port, seconds
        self.deadline = time.monotonic() + seconds
        self.seen = Counter()

    @property
    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def connect(self):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 16)
        except OSError as exc:
            self.seen[f"connect error: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.1)
            return None
        self.seen["connections"] += 1
        return reader, writer

    def answered(self, data: bytes) -> None:
        """Count the status of a response head at the start of data."""
        if data.startswith(b"HTTP/1."):
            self.seen[f"status {data[9:12].decode('latin-1')}"] += 1
        else:
            self.seen["closed without a response"] += 1

    async def held(self, reader, writer, drip: bytes | None, every_s: float) -> None:
        """Send `drip` every `every_s` until the peer answers or closes, or the attack ends."""
        while self.running:
            try:
                data = await asyncio.wait_for(reader.read(65536), min(every_s, max(0.01, self.deadline - time.monotonic())))
            except asyncio.TimeoutError:
                if drip:
                    try:
                        writer.write(drip)
                    except (OSError, RuntimeError):
                        self.seen["closed by the proxy"] += 1
                        return
                continue
            except OSError:
                self.seen["reset by the proxy"] += 1
                return
            self.answered(data)
            self.seen["closed by the proxy"] += 1
            return

    async def loop(self, one) -> None:
        """Run `one(reader, writer)` on a connection, again on a new one whenever it ends, until the end."""
        while self.running:
            conn = await self.connect()
            if conn is None:
                continue
            reader, writer = conn
            try:
                await one(reader, writer)
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.seen[f"error: {type(exc).__name__}"] += 1
            finally:
                writer.transport.abort()

    async def many(self, count: int, one) -> None:
        """`count` connections at once (opened 200 at a time, like a client ramping up)."""
        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(self.loop(one)))
            if i % 200 == 199:
                await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)

    # The attacks -------------------------------------------------------------------------
    async def slowloris(self) -> None:
        async def one(reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: lb.test\r\n")
            await self.held(reader, writer, b"X-Slow: 1\r\n", 2.0)
        await self.many(1000, one)

    async def slow_body(self) -> None:
        async def one(reader, writer):
            writer.write(b"POST /sink HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 1000000000\r\n\r\n")
            await self.held(reader, writer, b"x", 2.0)
        await self.many(200, one)

    async def slow_reader(self) -> None:
        async def one(reader, writer):
            writer.write(b"GET /bytes?n=104857600 HTTP/1.1\r\nHost: lb.test\r\n\r\n")
            writer.transport.pause_reading()            # never read: the proxy's writes back up
            while self.running and not writer.is_closing():
                await asyncio.sleep(0.2)
        await self.many(500, one)

    async def pipeline_flood(self) -> None:
        batch = b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n" * (262144 // 33)

        async def one(reader, writer):
            writer.transport.pause_reading()
            while self.running:
                writer.write(batch)
                try:
                    await asyncio.wait_for(writer.drain(), max(0.01, self.deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    return
                self.seen["256 KiB written"] += 1
        await self.many(200, one)

    async def trailer_flood(self) -> None:
        line = b"X-T: " + b"a" * 1017 + b"\r\n"

        async def one(reader, writer):
            writer.write(b"POST /sink HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
            await self.held(reader, writer, line * 16, 0.001)
        await self.many(50, one)

    async def big_head(self) -> None:
        async def one(reader, writer):
            writer.write(b"GET /headers?kib=256 HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(65536), REQUEST_TIMEOUT_S)
            self.answered(data)
            while data:                                   # HAProxy or lb close after the 502
                data = await asyncio.wait_for(reader.read(65536), REQUEST_TIMEOUT_S)
        await self.many(20, one)

    async def idle_conns(self) -> None:
        async def one(reader, writer):
            await self.held(reader, writer, None, 1.0)
        await self.many(8000, one)

    async def idle_ws(self) -> None:
        async def one(reader, writer):
            writer.write(b"GET /ws HTTP/1.1\r\nHost: lb.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            self.answered(head)
            await self.held(reader, writer, None, 1.0)
        await self.many(2000, one)


def run_attack(args) -> int:
    attack = Attack(args.port, args.seconds)

    async def main():
        try:
            await asyncio.wait_for(getattr(attack, args.attack)(), args.seconds + 5)
        except asyncio.TimeoutError:
            pass
    _run(main())
    print(json.dumps(dict(attack.seen)))
    return 0


# -- the system under test ----------------------------------------------------------------

def start_backends(workdir: Path, count: int, procs: list) -> list[int]:
    ports = [free_port() for _ in range(count)]
    for i, port in enumerate(ports):
        procs.append(subprocess.Popen([sys.executable, "-m", "lb.cli", "backend", "--listen", f"127.0.0.1:{port}",
                                       "--name", f"web{i + 1}", "--version", "v1"], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=open(workdir / f"web{i + 1}.err", "wb")))
    for port in ports:
        wait_port(port)
    return ports


def start_lb(workdir: Path, ports: list[int], procs: list) -> tuple[int, int]:
    port = free_port()
    backends = "\n".join(f"  - {{name: web{i + 1}, address: '127.0.0.1:{p}', version: v1}}" for i, p in enumerate(ports))
    conf = workdir / "lb.yaml"
    conf.write_text(f"""listen: 127.0.0.1:{port}
workers: 1
admin: {{socket: {workdir}/lb.sock}}
metrics: {{listen: 127.0.0.1:{free_port()}}}
state_file: {workdir}/lb.state
access_log: off
backends:
{backends}
""")
    proc = subprocess.Popen([sys.executable, "-m", "lb.cli", "serve", "-c", str(conf)], cwd=ROOT,
                            stderr=open(workdir / "lb.err", "wb"))
    procs.append(proc)
    wait_port(port, proc=proc)
    return proc.pid, port


def start_haproxy(workdir: Path, ports: list[int], procs: list) -> tuple[int, int]:
    """HAProxy with lb's default limits: 10 s for a head, 60 s idle, 30 s to a first byte, 1 h tunnels."""
    return throughput.start_haproxy(workdir, ports, procs, maxconn=9000, timeouts="""  timeout connect 2s
  timeout client 60s
  timeout http-request 10s
  timeout http-keep-alive 60s
  timeout server 30s
  timeout tunnel 1h
  timeout queue 5s""")


def wait_serving(port: int, timeout_s: float = 30.0) -> None:
    """Until 20 requests in a row get 200 (lb's health checks have brought the nodes up)."""
    import urllib.request
    deadline, ok = time.monotonic() + timeout_s, 0
    while ok < 20:
        if time.monotonic() > deadline:
            raise RuntimeError(f"127.0.0.1:{port} does not serve after {timeout_s}s")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                ok = ok + 1 if response.status == 200 else 0
        except OSError:
            ok = 0
            time.sleep(0.1)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (lb's master and its workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            pids += process_tree(int(child))
    return pids


class Sampler:
    """Peak RSS and CPU of a process and its children (lb's master and workers) over a phase.
    Peaks of the tree are sums over its processes."""

    def __init__(self, pid: int):
        self.pid = pid

    def kib(self, field: str) -> int:
        return sum(status_kib(pid, field) for pid in process_tree(self.pid))

    def start(self) -> None:
        self.hwm = True
        for pid in process_tree(self.pid):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")     # resets VmHWM to the current RSS
            except OSError:
                self.hwm = False
        self.cpu0, self.t0 = cpu_seconds(self.pid), time.monotonic()
        self.wrote0 = sum(written_bytes(pid) for pid in process_tree(self.pid))
        self.rss0 = self.peak = self.kib("VmRSS")
        self.anon0 = self.anon_peak = self.kib("RssAnon")

    def sample(self) -> None:
        self.peak = max(self.peak, self.kib("VmRSS"))
        self.anon_peak = max(self.anon_peak, self.kib("RssAnon"))

    def result(self) -> dict:
        if self.hwm:
            self.peak = max(self.peak, self.kib("VmHWM"))
        elapsed = time.monotonic() - self.t0
        return {"rss_start_mib": round(self.rss0 / 1024, 1), "rss_peak_mib": round(self.peak / 1024, 1),
                "anon_start_mib": round(self.anon0 / 1024, 1), "anon_peak_mib": round(self.anon_peak / 1024, 1),
                "cpu_pct": round(100 * (cpu_seconds(self.pid) - self.cpu0) / elapsed, 1),
                "wrote_mib": round((sum(written_bytes(pid) for pid in process_tree(self.pid))
                                    - self.wrote0) / 1048576, 1)}


def written_bytes(pid: int) -> int:
    """What the process wrote through system calls (sockets included): /proc/PID/io wchar."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def phase(pid: int, seconds: float, attack: str | None, port: int, workdir: Path) -> dict:
    sampler = Sampler(pid)
    sampler.start()
    start = time.monotonic()
    proc = None
    if attack:
        proc = subprocess.Popen([sys.executable, __file__, "--role", "attack", "--attack", attack,
                                 "--port", str(port), "--seconds", str(seconds)],
                                stdout=subprocess.PIPE, stderr=open(workdir / f"attack-{attack}.err", "wb"))
    end = start + seconds + (SETTLE_S if attack else 0)
    while time.monotonic() < end:
        sampler.sample()
        time.sleep(0.05)
    seen = {}
    if proc:
        out, _ = proc.communicate(timeout=60)
        seen = json.loads(out or b"{}")
    return {"attack": attack or "quiet", "window": [start, time.monotonic()], **sampler.result(), "attacker_saw": seen}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def users_in(window: list[float], users: dict) -> dict:
    start, end = window
    out = {}
    for kind in ("keepalive", "newconn"):
        lat = [r[1] for r in users["records"] if r[2] == kind and start <= r[0] < end]
        failed = [f for f in users["failures"] if f[1] == kind and start <= f[0] < end]
        seconds = [[r[1] for r in users["records"] if r[2] == kind and start + i <= r[0] < start + i + 1]
                   for i in range(int(end - start))]
        out[kind] = {"requests": len(lat), "failures": len(failed), "p50_ms": percentile(lat, 0.5),
                     "p99_ms": percentile(lat, 0.99), "max_ms": percentile(lat, 1.0),
                     "failure_kinds": dict(Counter(f[2][:80] for f in failed)),
                     "max_ms_by_second": [percentile(second, 1.0) for second in seconds]}
    return out


def run_phase(name: str, attack: str | None, ports: list[int], args, workdir: Path) -> dict:
    """A fresh proxy and fresh users for one phase, so no phase inherits another's memory."""
    procs: list[subprocess.Popen] = []
    label = attack or "quiet"
    try:
        pid, port = (start_lb if name == "lb" else start_haproxy)(workdir, ports, procs)
        wait_serving(port)
        out = workdir / f"users-{name}-{label}.json"
        users = subprocess.Popen([sys.executable, __file__, "--role", "users", "--port", str(port),
                                  "--users", str(args.users), "--newconn", str(args.newconn), "--out", str(out)],
                                 stderr=open(workdir / f"users-{name}-{label}.err", "wb"))
        procs.append(users)
        time.sleep(WARMUP_S)                             # the users connect and warm up (not measured)
        entry = phase(pid, args.seconds, attack, port, workdir)
        users.send_signal(signal.SIGTERM)
        users.wait(timeout=60)
        entry["users"] = users_in(entry.pop("window"), json.loads(out.read_text()))
        return entry
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()


def ratio(a, b) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def table(results: dict) -> tuple[str, dict]:
    """The per-attack table and the bar's verdict."""
    names = list(results)
    lines = ["| phase | proxy | users ok/failed | keep-alive p50 / p99 ms | new-conn p99 ms | RSS MiB start / peak "
             "| anon MiB start / peak | CPU % |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    verdict = {}
    phases = [p["attack"] for p in results[names[0]]["phases"]]
    for i, attack in enumerate(phases):
        for name in names:
            p = results[name]["phases"][i]
            ka, nc = p["users"]["keepalive"], p["users"]["newconn"]
            lines.append(f"| {attack} | {name} | {ka['requests'] + nc['requests']}/{ka['failures'] + nc['failures']} | "
                         f"{ka['p50_ms']} / {ka['p99_ms']} | {nc['p99_ms']} | {p['rss_start_mib']} / {p['rss_peak_mib']} | "
                         f"{p['anon_start_mib']} / {p['anon_peak_mib']} | {p['cpu_pct']} |")
        if "lb" in results and "haproxy" in results:
            lb, ha = results["lb"]["phases"][i], results["haproxy"]["phases"][i]
            verdict[attack] = {
                "lb_failures": lb["users"]["keepalive"]["failures"] + lb["users"]["newconn"]["failures"],
                "rss_peak_ratio": ratio(lb["rss_peak_mib"], ha["rss_peak_mib"]),
                "rss_growth_mib": [round(lb["rss_peak_mib"] - lb["rss_start_mib"], 1),
                                   round(ha["rss_peak_mib"] - ha["rss_start_mib"], 1)],
                "anon_peak_ratio": ratio(lb["anon_peak_mib"], ha["anon_peak_mib"]),
                "keepalive_p99_ratio": ratio(lb["users"]["keepalive"]["p99_ms"], ha["users"]["keepalive"]["p99_ms"]),
                "newconn_p99_ratio": ratio(lb["users"]["newconn"]["p99_ms"], ha["users"]["newconn"]["p99_ms"]),
            }
    return "\n".join(lines), verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["bench", "users", "attack"], default="bench")
    parser.add_argument("--port", type=int)
    parser.add_argument("--out")
    parser.add_argument("--attack", choices=ATTACKS)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--proxies", default="lb,haproxy")
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--newconn", type=int, default=4)
    parser.add_argument("--tag")
    args = parser.parse_args()
    if args.role == "users":
        return run_users(args)
    if args.role == "attack":
        return run_attack(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # stop what was started (finally blocks)

    args.attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"--attacks: unknown {sorted(unknown)}; choose from {','.join(ATTACKS)}")
    proxies = [p for p in args.proxies.split(",") if p]
    if "haproxy" in proxies and not shutil.which("haproxy"):
        subprocess.run(["bash", str(ROOT / "bench" / "setup.sh")], check=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="lb-abuse-") as tmp:
        workdir = Path(tmp)
        backends: list[subprocess.Popen] = []
        try:
            ports = start_backends(workdir, args.backends, backends)
            results = {name: {"phases": []} for name in proxies}
            for attack in [None, *args.attacks]:           # the proxies back to back, attack by attack
                for name in proxies:
                    print(f"  {name}: {attack or 'quiet'} ...", file=sys.stderr, flush=True)
                    results[name]["phases"].append(run_phase(name, attack, ports, args, workdir))
        finally:
            for proc in backends:
                proc.terminate()
            for proc in backends:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    text, verdict = table(results)
    print(text)
    print(json.dumps(verdict, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"abuse{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps({
        "command": "python bench/abuse.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds": args.seconds, "backends": args.backends, "users": args.users, "newconn": args.newconn,
        "results": results, "verdict": verdict, "table": text}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
