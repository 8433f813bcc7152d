"""Shared test harness: real `lb backend` and `lb serve` processes on free ports.

Every process a test starts is stopped by its pid at teardown. Waits are on
conditions (a line printed, a port accepting) and bounded in time.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from lb.demo.backend import start_detached, stop_pidfile
from lb.demo.users import Users
from lb.deploy.client import request
from supervise import become_subreaper, children, gone

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
LB_SCRIPT = str(Path(PYTHON).parent / "lb")       # the `lb` command, as pip installed it
START_TIMEOUT_S = 15.0
# After an upgrade the new master outlives the old one, its parent: orphaned, it becomes this
# process's child (not init's), so the tests reap it by pid and can tell it is gone.
become_subreaper()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.02):
    """Poll `predicate` until it returns a truthy value; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def wait_for_requests(users: Users, count: int, timeout_s: float = 60.0) -> None:
    """Until `users` (lb.demo.users) recorded `count` answers; AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while len(users.records) < count:
        assert time.monotonic() < deadline, f"only {len(users.records)} requests in {timeout_s}s"
        await asyncio.sleep(0.01)


def admin_answers(path: Path) -> bool:
    """The admin socket accepts a connection (a stale file left by a killed lb does not)."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Process:
    """A child process stopped by pid at teardown."""

    def __init__(self, args: list[str], cwd: Path = ROOT, **kwargs):
        self.args = args
        self.proc = subprocess.Popen(args, cwd=cwd, **kwargs)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class Backend(Process):
    def __init__(self, name: str, version: str = "v1", port: int | None = None,
                 warmup_s: float = 0.0, fail_rate: float = 0.0, args: tuple[str, ...] = ()):
        """`args`: more arguments to `lb backend` (`("--spa", "--chunks", "3")`)."""
        self.name = name
        self.version = version
        self.port = port or free_port()
        super().__init__([PYTHON, "-m", "lb.cli", "backend", "--listen", f"127.0.0.1:{self.port}",
                          "--version", version, "--name", name, "--warmup", str(warmup_s),
                          "--fail-rate", str(fail_rate), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else b""
        assert line.startswith(b"{"), f"backend {name} did not start: {line!r}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self, **extra) -> dict:
        return {"name": self.name, "address": self.address, "version": self.version, **extra}


class Lb(Process):
    """`lb serve` on a config written to tmp_path; restartable on the same config and state."""

    def __init__(self, tmp_path: Path, backends: list[dict], tls: dict | None = None, http2: bool = False,
                 cwd: Path | None = None, serve_args: tuple[str, ...] = (), **overrides):
        """`tls`: the first listener's `tls` section (then `port` speaks HTTPS); `http2`: the
        first listener also takes HTTP/2 with prior knowledge (h2c); `cwd`: lb is started
        there as an operator starts it, the `lb` command with `-c` relative to that folder;
        `serve_args`: more arguments to `lb serve`."""
        self.tmp_path = tmp_path
        self.cwd = cwd
        self.serve_args = list(serve_args)
        self.port = free_port()
        if tls is not None or http2:
            first = {"address": f"127.0.0.1:{self.port}", **({"tls": tls} if tls else {"http2": True})}
            overrides["listen"] = [first, *overrides.get("listen", [])]
        self.access_log = tmp_path / f"access-{self.port}.log"
        # Unix socket paths are limited to 108 bytes: keep them short, outside tmp_path.
        self.socket_path = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp")) / "lb.sock"
        self.config = {"listen": f"127.0.0.1:{self.port}", "backends": backends,
                       "access_log": str(self.access_log),
                       "admin": {"socket": str(self.socket_path)},
                       "metrics": {"listen": f"127.0.0.1:{free_port()}"},
                       "state_file": str(tmp_path / f"lb-{self.port}.state"), **overrides}
        self.config_path = tmp_path / f"lb-{self.port}.yaml"
        self.write_config()
        self.stderr_path = tmp_path / f"lb-{self.port}.err"
        self._start()

    def write_config(self, **changes) -> None:
        self.config.update(changes)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def _start(self) -> None:
        self._stderr = open(self.stderr_path, "ab")
        if self.cwd is None:
            args, cwd = [PYTHON, "-m", "lb.cli", "serve", "-c", str(self.config_path)], ROOT
        else:
            args, cwd = [LB_SCRIPT, "serve", "-c", os.path.relpath(self.config_path, self.cwd)], self.cwd
        super().__init__(args + self.serve_args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.master_pid = self.proc.pid           # changes with each upgrade
        # The master shows its admin socket once its workers serve.
        wait_for(lambda: (admin_answers(self.socket_path) and port_open(self.port))
                 or self.proc.poll() is not None, START_TIMEOUT_S, "lb to listen")
        assert self.proc.poll() is None, self.stderr_path.read_text()

    def restart(self) -> None:
        assert self.stop() == 0
        self._start()

    def ctl(self, line: str, timeout_s: float = 30.0) -> dict:
        """One admin command over the Unix socket (lb's own client, as `lb ctl` uses)."""
        return request(str(self.socket_path), line, timeout_s)

    def server(self, name: str) -> dict:
        reply = self.ctl(f"show server {name}")
        assert reply["ok"], reply
        return reply["server"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_lines(self) -> list[dict]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]

    def worker_pids(self) -> list[int]:
        """The master's children: its worker processes."""
        return children(self.master_pid)

    def upgrade(self, timeout_s: float = 60.0) -> dict:
        """`upgrade` over the admin socket; on success the new master is the one to stop."""
        reply = self.ctl("upgrade", timeout_s)
        if reply["ok"]:
            self.master_pid = reply["upgrade"]["new_pid"]
        return reply

    def signal(self, sig: int) -> None:
        if not gone(self.master_pid):
            os.kill(self.master_pid, sig)

    def rss_kib(self, field: str = "VmRSS") -> int:
        """`field` of /proc/PID/status summed over the master and its workers."""
        total = 0
        for pid in [self.master_pid, *self.worker_pids()]:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        return total

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.master_pid != self.proc.pid:       # upgraded: the first master is gone already
            self.signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while not gone(self.master_pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not gone(self.master_pid):
                os.kill(self.master_pid, signal.SIGKILL)
                wait_for(lambda: gone(self.master_pid), 5, "the killed master to go")
        code = super().stop(timeout_s)
        self._stderr.close()
        return code


@pytest.fixture
def spawn(request):
    """Start processes that are stopped at teardown: spawn(Backend, ...), spawn(Lb, ...)."""
    started: list[Process] = []

    def start(cls, *args, **kwargs):
        proc = cls(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (tests/e2e/browser.py) shared by the tests of a module (a start
    takes about a second). Closed at the module's end: its processes gone, its profile removed."""
    from browser import Browser         # Selenium is imported by the modules that use a browser only
    with Browser() as shared:
        yield shared


@pytest.fixture(params=["httptools", "h11"])
def http_impl(request) -> str:
    """Proxy tests run against both parser implementations."""
    return request.param


@pytest.fixture(scope="module")
def module_backends():
    """Three backends shared by the tests of a module that do not disturb them."""
    backends = [Backend(f"web{i}") for i in (1, 2, 3)]
    yield backends
    for backend in backends:
        backend.stop()


@pytest.fixture(scope="module", params=[("httptools", "auto"), ("h11", "auto"), ("httptools", 1)],
                ids=["httptools", "h11", "httptools-1-worker"])
def shared_lb(request, module_backends, tmp_path_factory):
    """One lb per parser implementation over the module's backends, with `workers: auto` (2 on
    the CI box), and once more with one worker: the proxy's tests run both ways."""
    http, workers = request.param
    lb = Lb(tmp_path_factory.mktemp("lb"), [b.config() for b in module_backends],
            http=http, workers=workers)
    yield lb
    lb.stop()


class _KeepOpen:
    """The connection's one buffered reader, which http.client may not close."""

    def __init__(self, handle):
        self._handle = handle

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def close(self):
        pass


class _SharedFile:
    def __init__(self, handle):
        self.handle = _KeepOpen(handle)

    def makefile(self, *args, **kwargs):
        return self.handle


class RawClient:
    """A raw socket client; responses are parsed by the stdlib (not lb's code)."""

    def __init__(self, port: int, timeout_s: float = 10.0, tls=None, server_hostname: str | None = None):
        """`tls`: an ssl.SSLContext to speak TLS with (to `server_hostname`)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname)
        self._file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> http.client.HTTPResponse:
        resp = http.client.HTTPResponse(_SharedFile(self._file), method=method)
        resp.begin()
        resp.body = resp.read()
        return resp

    def head_lines(self) -> list[bytes]:
        """One raw response head (for 1xx, which http.client skips over)."""
        lines = []
        while (line := self._file.readline()) not in (b"\r\n", b""):
            lines.append(line.rstrip(b"\r\n"))
        return lines

    def closed_by_peer(self) -> bool:
        """True when the peer closed (EOF or reset) with nothing more to read."""
        try:
            return self._file.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def get(port: int, path: str = "/", headers: dict | None = None, timeout_s: float = 10.0):
    """One GET on a fresh connection, parsed by http.client."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.body = resp.read()
        return resp
    finally:
        conn.close()


class FakeBackend:
    """A scripted TCP peer for what a real backend does only when broken.

    `behaviour(conn, head)` runs for each request head received; the default
    closes the connection without answering. Counts the request heads it saw.
    """

    def __init__(self, behaviour=None):
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []     # proxied request heads (health checks apart)
        self.rest = b""                     # what came after the last head in the same reads
        self.health_checks = 0
        self.behaviour = behaviour or (lambda conn, head: None)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                buffer = b""
                try:
                    while b"\r\n\r\n" not in buffer:
                        data = conn.recv(65536)
                        if not data:
                            break
                        buffer += data
                except OSError:
                    continue
                if b"\r\n\r\n" in buffer:
                    head, self.rest = buffer.split(b"\r\n\r\n", 1)
                    if b"User-Agent: lb-health" in head:
                        self.health_checks += 1
                        continue
                    self.requests.append(head)
                    self.behaviour(conn, head)

    def stop(self) -> None:
        self.sock.close()


def read_late_then_answer(conn, head: bytes, got: int) -> None:
    """A backend that takes a big body only after 3 s (`got`: the bytes of it read with the
    head), then answers 200 with its size."""
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    time.sleep(3)                                    # not reading: lb's buffers towards it fill up
    conn.settimeout(30)
    while got < length:
        data = conn.recv(1 << 20)
        if not data:
            return
        got += len(data)
    body = b"%d" % got
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def steady_load(lb: Lb, workers: int = 6, tls=None) -> Users:
    """Keep-alive clients hitting lb until stopped (async with), every answer recorded.
    No cookie is kept: each request is routed afresh. `tls`: an ssl.SSLContext (HTTPS)."""
    return Users("127.0.0.1", lb.port, slots=workers, life=None, think_s=0.002, keep_cookie=False, ssl=tls)


# -- TLS: certificates made by trustme, clients that trust its CA --------------------------
def write_cert(ca, folder, stem: str, *names: str, **kwargs) -> dict:
    """A certificate for `names` (and its chain) and its key, as lb's config names them."""
    issued = ca.issue_cert(*names, **kwargs)
    cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return {"cert": str(cert), "key": str(key)}


def client_context(ca, minimum=ssl.TLSVersion.TLSv1_2, maximum=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    return context


class DetachedBackends:
    """Backends started the way a deploy's update command restarts them: detached, with
    pidfiles. The `detached_backends` fixture makes them: detached_backends(10)."""

    def __init__(self, directory, count: int, version: str = "v1"):
        self.dir = directory
        self.names = [f"web{i}" for i in range(1, count + 1)]
        self.ports = {name: free_port() for name in self.names}
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda name: self.start(name, version), self.names))

    def pidfile(self, name: str) -> str:
        return str(self.dir / f"{name}.pid")

    def start(self, name: str, version: str) -> None:
        start_detached(["--listen", f"127.0.0.1:{self.ports[name]}", "--version", version, "--name", name],
                       self.pidfile(name), None)

    def configs(self) -> list[dict]:
        return [{"name": n, "address": f"127.0.0.1:{self.ports[n]}", "version": "v1"} for n in self.names]

    def update_command(self, extra: str = "") -> str:
        """The update command: stop the node's backend, start the new version in its place."""
        return (f"{PYTHON} -m lb.cli backend --listen {{host}}:{{port}} --version {{version}} --name {{name}} "
                f"--pidfile {self.dir}/{{name}}.pid --replace --detach {extra}").strip()

    def stop(self) -> None:
        for name in self.names:
            stop_pidfile(self.pidfile(name))


@pytest.fixture
def detached_backends(tmp_path):
    made = []

    def make(count: int) -> DetachedBackends:
        made.append(DetachedBackends(tmp_path, count))
        return made[-1]

    yield make
    for backends in made:
        backends.stop()
