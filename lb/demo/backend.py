"""`lb backend`: the small real HTTP/1.1 app server used by tests, demo and benches.

Built on h11 and asyncio streams, deliberately apart from lb's own parsing
code, so the proxy is tested against an independent implementation.

Routes:
  GET /                 {"node", "version"} JSON
  GET /health           200 (503 during --warmup seconds after start; 404 with
                        X-Lb-Drain: 1 while it asks to be drained, below)
  POST /drain, /undrain start, stop asking lb to drain it (its /health answers 404)
  POST /sick, /well     start, stop failing its health checks (503) while it serves
                        (these four switches refuse a request that came through a proxy)
  *   /echo             method, path, headers and body (latin-1 text) as JSON
  *   /sink             reads the body without keeping it: {"bytes": N}
  GET /bytes?n=N        N bytes of body, streamed with Content-Length
  GET /headers?kib=N    a response head of about N KiB (N headers of 1 KiB): a proxy's
                        response-head limit, for the tests and bench/abuse.py
  GET /slow?ms=N        answers after N ms
  GET /stream?chunks=N&ms=M   a chunked body, N chunks M ms apart
  GET /setcookie        sets the app's own cookie (app=1)
  *   /status/N         that status
  GET /ws               WebSocket echo (wsproto does the framing)
With --spa (lb/demo/spa.py; without it / answers JSON as above):
  GET / , /index.html   the version's HTML page (no-cache), naming its hashed assets
  GET /assets/NAME.HASH.js   this version's asset (immutable); any other asset path 404,
                        as a newer release answers an older page's lazy chunk
  GET /api/...          {"version", "node", "path"} JSON (no-store)
Every response carries X-Backend-Version and X-Backend-Node.
--fail-rate P answers 500 to that fraction of requests (never to /health and the
switches above): a broken release whose health check still passes.
SIGTERM/SIGINT: stop accepting, finish requests in flight, exit 0. With
--grace S, SIGTERM first asks to be drained for S seconds (/health answers 404
and X-Lb-Drain: 1, every other request is served as before), as a Kubernetes
preStop sleep means to: lb stops sending it requests before it stops
listening. A second signal ends the grace at once. The default is 0 (stop at
once, as before): update commands that `--replace` a backend lb has already
drained gain nothing by waiting.

For update commands (demo, tests, benches): `--pidfile F` records the pid once
listening; `--replace` first stops the backend F names and waits until it is
gone; `--detach` starts the server in its own session and returns once it
listens, so `lb backend --listen ... --version v2 --pidfile F --replace --detach`
is a complete "stop the old code, start the new" update command.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import h11
import wsproto
import wsproto.events as ws

from ..core.http1 import reason_phrase
from ..files import atomic_write
from .spa import Answer, Site

_CONN_ID: contextvars.ContextVar[int] = contextvars.ContextVar("conn_id", default=0)
_HEAD: contextvars.ContextVar[bool] = contextvars.ContextVar("head", default=False)   # answering a HEAD
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_SIZE = 65536
MAX_ECHO_BYTES = 1 << 20


# POST switches of the node's health, for whoever runs it (tests, an operator on the host):
# /drain and /undrain (it asks lb to drain it), /sick and /well (its checks fail while it serves)
SWITCHES = ("/drain", "/undrain", "/sick", "/well")

class BackendApp:
    def __init__(self, name: str, version: str, warmup_s: float, fail_rate: float = 0.0,
                 spa: Site | None = None):
        self.asking_drain = False    # /health answers 404 + X-Lb-Drain: 1 (--grace, POST /drain)
        self.sick = False            # /health answers 503 while / serves (POST /sick, /well)
        self.name = name
        self.spa = spa
        self.fail_rate = fail_rate
        self._fail_debt = 0.0        # grows by fail_rate a request; a failure pays 1
        self.version = version
        self.loop = asyncio.get_running_loop()
        self.ready_at = self.loop.time() + warmup_s
        self.connections: set[asyncio.StreamWriter] = set()
        self.busy = 0
        self.accepted = 0
        self.stopping = False
        self.idle = asyncio.Event()

    def headers(self, extra=()) -> list[tuple[bytes, bytes]]:
        return [(b"x-backend-version", self.version.encode()),
                (b"x-backend-node", self.name.encode()),
                (b"x-backend-conn", str(self._conn_id()).encode()), *extra]

    @staticmethod
    def _conn_id() -> int:
        """Which of this backend's connections serves the current request."""
        return _CONN_ID.get()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        self.accepted += 1
        _CONN_ID.set(self.accepted)
        conn = h11.Connection(h11.SERVER)
        try:
            while not self.stopping or conn.their_state is not h11.IDLE:
                event = await self._next(conn, reader)
                if isinstance(event, h11.Request):
                    self.busy += 1
                    try:
                        done = await self._serve(conn, event, reader, writer)
                    finally:
                        self.busy -= 1
                        if not self.busy:
                            self.idle.set()
                    if done or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        break
                    conn.start_next_cycle()
                else:
                    break
        except (h11.ProtocolError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.connections.discard(writer)

    async def _next(self, conn: h11.Connection, reader):
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await reader.read(READ_SIZE)
            conn.receive_data(data)

    async def _body(self, conn, reader, writer, keep: bool):
        """Yield body pieces; sends 100 Continue first when the client waits for it."""
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        total = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_SIZE))
                continue
            if isinstance(event, h11.Data):
                if keep:
                    total += event.data
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise h11.RemoteProtocolError("unexpected event", 400)

    async def _serve(self, conn, request: h11.Request, reader, writer) -> bool:
        """Answer one request; True when the connection must end (an upgrade)."""
        _HEAD.set(request.method == b"HEAD")   # h11 refuses body bytes for it
        url = urlsplit(request.target.decode("latin-1"))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/ws" and self._is_websocket(request):
            await self._websocket(conn, request, reader, writer)
            return True
        if path == "/echo":
            body = b"".join([piece async for piece in self._body(conn, reader, writer, True)])[:MAX_ECHO_BYTES]
            payload = {"method": request.method.decode(), "path": request.target.decode("latin-1"),
                       "headers": [[n.decode("latin-1"), v.decode("latin-1")]
                                   for n, v in request.headers.raw_items()],
                       "body": body.decode("latin-1"), "node": self.name, "version": self.version}
            await self._json(conn, writer, 200, payload)
            return False
        if path == "/sink":
            count = 0
            async for piece in self._body(conn, reader, writer, False):
                count += len(piece)
            await self._json(conn, writer, 200, {"bytes": count, "node": self.name})
            return False
        async for _ in self._body(conn, reader, writer, False):
            pass
        if path not in ("/health", *SWITCHES) and self._should_fail():
            await self._json(conn, writer, 500, {"error": "injected failure", "node": self.name,
                                                 "version": self.version})
            return False
        answer = self.spa.answer(path) if self.spa else None
        if answer is not None:
            await self._send(conn, writer, answer)
        elif path == "/health" and self.asking_drain and not self.stopping:
            await self._json(conn, writer, 404, {"ok": False, "drain": True, "version": self.version},
                             extra=[(b"x-lb-drain", b"1")])
        elif path == "/health":
            ok = self.loop.time() >= self.ready_at and not self.stopping and not self.sick
            await self._json(conn, writer, 200 if ok else 503, {"ok": ok, "version": self.version})
        elif path in SWITCHES and request.method == b"POST":
            # for whoever runs the node, not for lb's users: a request lb forwarded is refused
            if any(name in (b"x-forwarded-for", b"forwarded", b"via") for name, _ in request.headers):
                await self._json(conn, writer, 403, {"error": f"POST {path} is not taken through a proxy",
                                                     "node": self.name})
                return False
            if path in ("/drain", "/undrain"):
                self.asking_drain = path == "/drain"
            else:
                self.sick = path == "/sick"
            await self._json(conn, writer, 200, {"node": self.name, "asking_drain": self.asking_drain,
                                                 "sick": self.sick})
        elif path == "/setcookie":
            await self._json(conn, writer, 200, {"node": self.name, "version": self.version},
                             extra=[(b"set-cookie", b"app=1; Path=/")])
        elif path == "/slow":
            await asyncio.sleep(int(query.get("ms", "100")) / 1000)
            await self._json(conn, writer, 200, {"node": self.name, "version": self.version})
        elif path == "/stream":
            await self._stream(conn, writer, int(query.get("chunks", "5")), int(query.get("ms", "10")))
        elif path == "/bytes":
            await self._bytes(conn, writer, int(query.get("n", "1024")))
        elif path == "/headers":
            pad = b"p" * 1010
            await self._json(conn, writer, 200, {"node": self.name, "version": self.version},
                             extra=[(b"x-pad-%d" % i, pad) for i in range(int(query.get("kib", "1")))])
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            await self._json(conn, writer, status, {"status": status, "node": self.name,
                                                    "version": self.version},
                             with_body=status not in (204, 304) and status >= 200)
        else:
            await self._json(conn, writer, 200, {"node": self.name, "version": self.version})
        return False

    def _should_fail(self) -> bool:
        self._fail_debt += self.fail_rate
        if self._fail_debt >= 1.0 - 1e-9:
            self._fail_debt -= 1.0
            return True
        return False

    async def _json(self, conn, writer, status: int, payload, with_body: bool = True,
                    extra=()) -> None:
        body = json.dumps(payload).encode() if with_body else b""
        writer.write(self._whole(conn, status, [(b"content-type", b"application/json"), *extra],
                                 body, with_body))
        await writer.drain()

    async def _send(self, conn, writer, answer: Answer) -> None:
        """An answer lb/demo/spa.py decided, with this backend's headers."""
        writer.write(self._whole(conn, answer.status, list(answer.headers), answer.body))
        await writer.drain()

    def _whole(self, conn, status: int, extra: list, body: bytes, with_body: bool = True) -> bytes:
        """One whole response: this backend's headers, then `extra`, then Content-Length."""
        headers = self.headers(extra)
        if with_body:
            headers.append((b"content-length", str(len(body)).encode()))
        # One write for the whole response: a backend killed at any instant has sent all of it
        # or none (three writes could leave a head without its body, which no proxy may retry).
        out = [conn.send(h11.Response(status_code=status, headers=headers, reason=reason_phrase(status)))]
        if body and conn.our_state is h11.SEND_BODY and not _HEAD.get():
            out.append(conn.send(h11.Data(data=body)))
        out.append(conn.send(h11.EndOfMessage()))
        return b"".join(out)

    async def _stream(self, conn, writer, chunks: int, ms: int) -> None:
        writer.write(conn.send(h11.Response(status_code=200, headers=self.headers(
            [(b"content-type", b"text/plain"), (b"transfer-encoding", b"chunked")]))))
        for i in range(chunks):
            if i:
                await asyncio.sleep(ms / 1000)
            writer.write(conn.send(h11.Data(data=b"chunk %d\n" % i)))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _bytes(self, conn, writer, count: int) -> None:
        writer.write(conn.send(h11.Response(status_code=200, headers=self.headers(
            [(b"content-type", b"application/octet-stream"),
             (b"content-length", str(count).encode())]))))
        block = b"x" * READ_SIZE
        while count > 0:
            piece = block[:count]
            writer.write(conn.send(h11.Data(data=piece)))
            count -= len(piece)
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    @staticmethod
    def _is_websocket(request: h11.Request) -> bool:
        headers = {n.lower(): v for n, v in request.headers}
        return headers.get(b"upgrade", b"").lower() == b"websocket" and b"sec-websocket-key" in headers

    async def _websocket(self, conn, request, reader, writer) -> None:
        key = dict(request.headers)[b"sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=self.headers([
            (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", accept)]))))
        socket = wsproto.Connection(wsproto.ConnectionType.SERVER)
        if conn.trailing_data[0]:
            socket.receive_data(conn.trailing_data[0])
        parts: list = []
        while True:
            for event in socket.events():
                if isinstance(event, (ws.TextMessage, ws.BytesMessage)):
                    parts.append(event.data)   # wsproto hands large messages over in parts
                    if event.message_finished:
                        data = "".join(parts) if isinstance(event, ws.TextMessage) else b"".join(parts)
                        writer.write(socket.send(ws.Message(data=data)))
                        parts = []
                elif isinstance(event, ws.Ping):
                    writer.write(socket.send(event.response()))
                elif isinstance(event, ws.CloseConnection):
                    if socket.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        writer.write(socket.send(event.response()))
                    await writer.drain()
                    return
            await writer.drain()
            data = await reader.read(READ_SIZE)
            socket.receive_data(data or None)
            if not data:
                return

    async def stop(self, server: asyncio.base_events.Server) -> None:
        """Stop accepting, let requests in flight finish, close idle connections."""
        self.stopping = True
        server.close()
        if self.busy:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), 30)
            except asyncio.TimeoutError:
                pass
        # Idle keep-alive connections: closing them ends their pending read.
        for writer in list(self.connections):
            writer.close()
        for _ in range(100):
            if not self.connections:
                break
            await asyncio.sleep(0.01)


async def serve(host: str, port: int, name: str, version: str, warmup_s: float,
                fail_rate: float = 0.0, pidfile: str | None = None, spa: Site | None = None,
                grace_s: float = 0.0) -> None:
    app = BackendApp(name, version, warmup_s, fail_rate, spa)
    server = await asyncio.start_server(app.handle, host, port, reuse_address=True, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        app.loop.add_signal_handler(sig, stop.set)
    if pidfile:
        _write_pidfile(pidfile, os.getpid())      # after the bind: "listening" to --detach
    print(json.dumps({"backend": name, "version": version, "listen": f"{host}:{port}"}), flush=True)
    try:
        await stop.wait()
        if grace_s > 0:
            app.asking_drain = True      # lb stops sending requests; they are served meanwhile
            stop.clear()
            try:
                await asyncio.wait_for(stop.wait(), grace_s)      # a second signal: no more grace
            except asyncio.TimeoutError:
                pass
        await app.stop(server)
    finally:
        if pidfile and read_pidfile(pidfile) == os.getpid():
            os.unlink(pidfile)


# -- the process as an update command drives it (--pidfile, --replace, --detach) --------

def read_pidfile(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _write_pidfile(path: str, pid: int) -> None:
    atomic_write(path, f"{pid}\n")


def backend_alive(pid: int) -> bool:
    """True while `pid` is a running (not zombie) `lb backend` process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            is_backend = b"\0backend\0" in handle.read()
    except (OSError, IndexError):
        return False
    return state != b"Z" and is_backend     # a reused pid is not ours to signal


def stop_pidfile(path: str, timeout_s: float = 15.0) -> bool:
    """SIGTERM the backend named by `path` and wait until it is gone (SIGKILL at the
    timeout). Returns whether there was one to stop."""
    pid = read_pidfile(path)
    if pid is None or not backend_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while backend_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.02)
    return True


def start_detached(argv: list[str], pidfile: str, log_path: str | None,
                   timeout_s: float = 15.0) -> int:
    """Start `lb backend ARGV` in its own session, wait until it listens (it writes
    `pidfile` after binding) and return its pid. Raises RuntimeError if it exits first."""
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([sys.executable, "-m", "lb.cli", "backend", *argv, "--pidfile", pidfile],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        if log_path:
            out.close()
    deadline = time.monotonic() + timeout_s
    while read_pidfile(pidfile) != proc.pid:
        if proc.poll() is not None:
            raise RuntimeError(f"the backend exited with code {proc.returncode} before listening")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the backend did not listen within {timeout_s:g}s")
        time.sleep(0.02)
    return proc.pid
