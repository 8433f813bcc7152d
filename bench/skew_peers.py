"""The skew scenario's peers: HAProxy and nginx over their own 10 SPA backends, and the same
rolling deploy lb's `lb deploy` does, driven by hand as their operators would.

Theory of operation
-------------------
Each peer runs its own 10 `lb backend --spa` processes (v1) on free ports, so lb, HAProxy
and nginx serve the same users at the same time without sharing a backend. Stickiness is
each peer's usual one for an app with sessions:

- HAProxy: `cookie SRVID insert indirect nocache` (the server's name in a cookie HAProxy
  adds), `option redispatch` for a cookie naming a server out of service, health checks on
  /health as lb's (1 s, rise 2, fall 3). A node is taken out with the runtime API over the
  stats socket: `set server be/webN state drain` (no new users; HAProxy still sends the
  users whose cookie names it), then, once `show stat` says its current sessions are 0,
  `state maint`; after the update `state ready`, and the deploy waits for the checks to say UP.
- nginx (nginx-light has `hash`, no active health checks): `hash $cookie_sid consistent`,
  the app's session cookie, so a user stays on one node. A node is taken out by marking it
  `down` in the upstream and reloading (SIGHUP to the master, what `nginx -s reload` sends);
  it is drained once the workers that predate the reload have exited (they finish their
  requests and close their idle connections). After the update the deploy waits for the
  backend's /health, removes `down` and reloads.

`deploy()` walks the same batches as `lb deploy` (lb's own `plan()`: a canary of 1, then 2
at a time) with the same steps, bounds and bakes: take out, wait drained, update (the same
update command: stop v1, start v2 on the same port), put back, wait up, bake.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Protocol

import aiohttp
from deploy_under_load import NODES, start_backends, stop_backends, update_command
from skew_tabs import Service
from throughput import free_port, wait_port

from lb.deploy.plan import Options, fill, plan

POLL_S = 0.1
ADMIN_TIMEOUT_S = 5.0


class Peer(Protocol):
    """A proxy under test that is not lb, with its backends and the deploy's four moves."""
    name: str
    port: int
    dir: Path
    ports: dict[str, int]
    backend_args: tuple[str, ...]

    def start(self) -> None: ...
    def stop(self) -> None: ...
    async def take_out(self, nodes: list[str]) -> None: ...
    async def wait_drained(self, nodes: list[str], timeout_s: float) -> list[str]: ...
    async def put_back(self, nodes: list[str], timeout_s: float) -> None: ...
    async def wait_up(self, nodes: list[str], timeout_s: float) -> None: ...


def new_backends(workdir: Path) -> dict[str, int]:
    workdir.mkdir(parents=True, exist_ok=True)
    return {f"web{i}": free_port() for i in range(1, NODES + 1)}


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- HAProxy -----------------------------------------------------------------------------------

class Haproxy:
    name = "haproxy"

    def __init__(self, workdir: Path, backend_args: tuple[str, ...]):
        self.dir, self.backend_args = workdir, backend_args
        self.ports = new_backends(workdir)
        self.port = free_port()
        self.socket = workdir / "haproxy.sock"
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        servers = "\n".join(f"  server {name} 127.0.0.1:{port} cookie {name}" for name, port in self.ports.items())
        return f"""global
  maxconn 8192
  nbthread 1
  stats socket {self.socket} mode 600 level admin
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
  retries 2
  option redispatch
  retry-on conn-failure empty-response
frontend fe
  bind 127.0.0.1:{self.port}
  default_backend be
backend be
  balance leastconn
  cookie SRVID insert indirect nocache
  option httpchk GET /health
  default-server check inter 1s rise 2 fall 3
{servers}
"""

    def start(self) -> None:
        start_backends(self.dir, self.ports, self.backend_args)
        conf = self.dir / "haproxy.cfg"
        conf.write_text(self.config())
        with open(self.dir / "haproxy.err", "ab") as err:
            self.proc = subprocess.Popen(["haproxy", "-f", str(conf), "-db"], stdout=subprocess.DEVNULL, stderr=err)
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        try:
            stop_process(self.proc)
        finally:
            stop_backends(self.dir, list(self.ports))

    async def command(self, line: str) -> str:
        """One runtime API command over the stats socket; its answer."""
        async def talk() -> str:
            reader, writer = await asyncio.open_unix_connection(str(self.socket))
            try:
                writer.write(line.encode() + b"\n")
                await writer.drain()
                return (await reader.read()).decode()
            finally:
                writer.close()
        answer = await asyncio.wait_for(talk(), ADMIN_TIMEOUT_S)
        if answer.strip() and line.startswith("set "):
            raise RuntimeError(f"haproxy refused {line!r}: {answer.strip()[:200]}")
        return answer

    async def servers(self) -> dict[str, dict]:
        """`show stat` of backend be: server name -> its row (scur, qcur, status, ...)."""
        text = (await self.command("show stat")).lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
                if row.get("pxname") == "be" and row["svname"] in self.ports}

    async def take_out(self, nodes: list[str]) -> None:
        for node in nodes:
            await self.command(f"set server be/{node} state drain")

    async def wait_drained(self, nodes: list[str], timeout_s: float) -> list[str]:
        """Each node to maint once its current sessions reach 0; the nodes that never got there."""
        deadline, left = time.monotonic() + timeout_s, set(nodes)
        while left and time.monotonic() < deadline:
            rows = await self.servers()
            for node in sorted(left):
                if rows[node]["scur"] == "0" and rows[node]["qcur"] in ("0", ""):
                    await self.command(f"set server be/{node} state maint")
                    left.discard(node)
            if left:
                await asyncio.sleep(POLL_S)
        for node in sorted(left):
            await self.command(f"set server be/{node} state maint")
        return sorted(left)

    async def put_back(self, nodes: list[str], timeout_s: float) -> None:
        for node in nodes:
            await self.command(f"set server be/{node} state ready")

    async def wait_up(self, nodes: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = await self.servers()
            if all(rows[node]["status"] == "UP" for node in nodes):
                return
            await asyncio.sleep(POLL_S)
        raise RuntimeError(f"haproxy: {nodes} not UP within {timeout_s:g}s")


# -- nginx -------------------------------------------------------------------------------------

def children(pid: int) -> set[int]:
    """The pids whose parent is `pid` (nginx's workers of every generation)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(entry))
    return out


class Nginx:
    name = "nginx"

    def __init__(self, workdir: Path, backend_args: tuple[str, ...]):
        self.dir, self.backend_args = workdir, backend_args
        self.ports = new_backends(workdir)
        self.port = free_port()
        self.down: set[str] = set()
        self.proc: subprocess.Popen | None = None
        self.conf = workdir / "nginx.conf"
        self.old_workers: set[int] = set()

    def config(self) -> str:
        servers = " ".join(f"server 127.0.0.1:{port}{' down' if name in self.down else ''};"
                           for name, port in self.ports.items())
        return f"""worker_processes 1; daemon off; pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
worker_shutdown_timeout 30s;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream be {{ hash $cookie_sid consistent; {servers} keepalive 32; }}
  server {{ listen 127.0.0.1:{self.port};
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header Host $host; }} }} }}
"""

    def start(self) -> None:
        start_backends(self.dir, self.ports, self.backend_args)
        self.conf.write_text(self.config())
        with open(self.dir / "nginx.err", "ab") as err:
            self.proc = subprocess.Popen(["nginx", "-c", str(self.conf), "-p", str(self.dir)],
                                         stdout=subprocess.DEVNULL, stderr=err)
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        try:
            stop_process(self.proc)       # SIGTERM: the master stops its workers and waits for them
        finally:
            stop_backends(self.dir, list(self.ports))

    async def reload(self) -> set[int]:
        """Write the config and reload; the workers that predate it (they finish and exit)."""
        old = children(self.proc.pid)
        self.conf.write_text(self.config())
        self.proc.send_signal(signal.SIGHUP)          # what `nginx -s reload` sends
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        while not children(self.proc.pid) - old:      # the new config's worker
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not reload: {(self.dir / 'error.log').read_text()[-500:]}")
            await asyncio.sleep(POLL_S)
        return old

    async def take_out(self, nodes: list[str]) -> None:
        self.down |= set(nodes)
        self.old_workers = await self.reload()

    async def wait_drained(self, nodes: list[str], timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while self.old_workers & children(self.proc.pid):
            if time.monotonic() > deadline:
                return list(nodes)
            await asyncio.sleep(POLL_S)
        return []

    async def put_back(self, nodes: list[str], timeout_s: float) -> None:
        """Once each backend's /health answers 200 (nginx does not check), back in the upstream."""
        await asyncio.gather(*(wait_healthy(self.ports[node], timeout_s) for node in nodes))
        self.down -= set(nodes)
        await self.reload()

    async def wait_up(self, nodes: list[str], timeout_s: float) -> None:
        return None                                   # put_back waited for health


async def wait_healthy(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(POLL_S)
    raise RuntimeError(f"127.0.0.1:{port} not healthy within {timeout_s:g}s")


PEERS = {"haproxy": Haproxy, "nginx": Nginx}


# -- the deploy --------------------------------------------------------------------------------

def batches(nodes: list[str], batch: str = "2", canary: int = 1) -> list[list[str]]:
    """The batches `lb deploy --batch 2 --canary 1` makes of `nodes` (lb's own plan())."""
    servers = [{"name": n, "version": "v1", "state": "ready", "health": "up", "weight": 100} for n in nodes]
    planned, _ = plan(servers, Options(to="v2", update="-", batch=batch, canary=canary))
    return [list(b.nodes) for b in planned]


class PeerDeploy:
    """The rolling deploy of one peer, batch by batch, its steps timed as `events`."""

    def __init__(self, peer: Peer, service: Service, bake_s: float, canary_bake_s: float,
                 drain_timeout_s: float = 30.0, health_timeout_s: float = 60.0, update_timeout_s: float = 120.0):
        self.peer, self.service = peer, service
        self.bake_s, self.canary_bake_s = bake_s, canary_bake_s
        self.drain_timeout_s, self.health_timeout_s, self.update_timeout_s = \
            drain_timeout_s, health_timeout_s, update_timeout_s
        self.command = update_command(peer.dir, peer.backend_args)
        self.events: list[dict] = []
        self.error: str | None = None

    def event(self, what: str, **fields) -> None:
        self.events.append({"at": self.service.now(), "event": what, **fields})

    async def run(self, to: str = "v2") -> int:
        """0 done; 1 after a failure (recorded in `error`; nothing is rolled back)."""
        try:
            for index, nodes in enumerate(batches(list(self.peer.ports))):
                self.event("batch", index=index + 1, nodes=nodes)
                await self.walk(nodes, to)
                bake_s = self.canary_bake_s if index == 0 else self.bake_s
                self.event("bake", nodes=nodes, seconds=bake_s)
                await asyncio.sleep(bake_s)
            self.event("done")
            return 0
        except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.event("failed", reason=self.error)
            return 1

    async def walk(self, nodes: list[str], to: str) -> None:
        peer = self.peer
        self.event("take out", nodes=nodes)
        await peer.take_out(nodes)
        for node in nodes:
            self.service.take_out(node)
        late = await peer.wait_drained(nodes, self.drain_timeout_s)
        self.event("drained", nodes=nodes, **({"timed_out": late} if late else {}))
        await asyncio.gather(*(self.update(node, to) for node in nodes))
        self.event("updated", nodes=nodes)
        await peer.put_back(nodes, self.health_timeout_s)
        await peer.wait_up(nodes, self.health_timeout_s)
        for node in nodes:
            self.service.put_back(node, to)
        self.event("up", nodes=nodes)

    async def update(self, node: str, to: str) -> None:
        values = {"name": node, "host": "127.0.0.1", "port": self.peer.ports[node], "version": to, "old_version": "v1"}
        with open(self.peer.dir / "deploy.log", "ab") as log:
            proc = await asyncio.create_subprocess_shell(fill(self.command, values), stdin=subprocess.DEVNULL,
                                                         stdout=log, stderr=subprocess.STDOUT,
                                                         start_new_session=True)
            try:
                code = await asyncio.wait_for(proc.wait(), self.update_timeout_s)
            except asyncio.TimeoutError:
                raise RuntimeError(f"{self.peer.name}: the update of {node} took over {self.update_timeout_s:g}s")
            finally:
                if proc.returncode is None:          # timed out, or the run was stopped
                    proc.kill()
                    await proc.wait()
        if code != 0:
            raise RuntimeError(f"{self.peer.name}: the update of {node} exited {code}")
