"""The cluster store's client: etcd v3 through its JSON gateway, from asyncio.

Theory of operation
-------------------
etcd (3.4 and later) serves its v3 API as JSON over plain HTTP/1.1 at `/v3/...` on the
client port (grpc-gateway): a POST of a JSON request answers a JSON message; keys and values
are base64; 64-bit numbers are strings; a field at its zero value is left out (a `put`
event has no `type`, a failed txn no `succeeded`). A streaming call (watch, lease
keepalive) answers chunked, one JSON message a line, each `{"result": ...}` or
`{"error": ...}`. Errors are JSON with the gRPC `code` and a `message`.

Every call opens a connection to one endpoint, sends one request (`Connection: close`) and
reads one bounded answer with lb's own HTTP/1.1 response parser (the one the health
checks use), all within `attempt_timeout_s`. The control plane makes a few calls a second
at most, so a pool of kept-alive connections would buy nothing but stale-connection cases.

Failover: `Endpoints` keeps the members in order, the one that answered last first. A call
goes to the next one when an endpoint cannot be reached or says it cannot serve now
(gRPC UNAVAILABLE or DEADLINE_EXCEEDED: no leader, a leader change), for `ROUNDS` rounds.
A write whose request was sent and whose answer was lost is not sent again (it may have
been applied): its error says so, and the caller re-reads (clientv3 does the same for its
non-repeatable requests). Reads, keepalives and revokes are repeated freely.

A watch is a stream on one endpoint; when it breaks, or stays silent longer than
`watch_idle_s`, it is opened again on the next endpoint from the revision after the last
event it delivered, so no event is lost or repeated. A start revision that was compacted is
an `EtcdError` with `compact_revision` set: the caller reads afresh and watches from there.

With `tls` (cluster.tls) every connection is TLS, etcd's certificate verified; a failed
handshake is an endpoint that cannot be reached. Every refusal is an `EtcdError` (an
`LbError`) naming the endpoints tried.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator

from ..core import http1
from ..core.errors import HttpError, LbError
# the wire format is lb/core/etcdwire.py's; its names are this module's too (callers and tests)
from ..core.etcdwire import (  # noqa: F401
    EtcdError, COMPARE_RESULTS, COMPARE_TARGETS, Compare, Delete, Event, KeyValue, Lease, Put, Range,
    TxnResult, as_bytes, b64, key_range, key_value, parse_events, parse_range, prefix_end, revision_of,
    txn_request, unb64, unchanged_since)

ATTEMPT_TIMEOUT_S = 2.0         # one endpoint's answer to one request, connect included
WATCH_IDLE_S = 60.0             # a watch silent this long is opened again (resumed)
MAX_ANSWER_BYTES = 16 << 20     # one answer, or one watch message
ROUNDS = 2                      # each endpoint is tried at most this often per call
ROUND_PAUSE_S = 0.25            # between rounds: an election takes about one election timeout
READ_BYTES = 65536
# gRPC codes an etcd member answers when it cannot serve now but another member may.
UNAVAILABLE, DEADLINE_EXCEEDED = 14, 4
TRY_ELSEWHERE = {UNAVAILABLE, DEADLINE_EXCEEDED}


# --- encoding and the request and answer shapes (pure) --------------------------------------

def error_from(status: int, body: bytes, endpoint: str) -> EtcdError:
    """An error answer (gateway JSON `{"code", "message"}`, or any text) as an EtcdError."""
    try:
        answer = json.loads(body)
        message, code = answer.get("message") or answer.get("error"), answer.get("code")
        if isinstance(message, dict):       # a streaming call's error: {"error": {"grpc_code", "message"}}
            message, code = message.get("message"), message.get("grpc_code", code)
    except (ValueError, AttributeError):
        message, code = body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}", None
    return EtcdError(f"etcd at {endpoint}: {message}", code=code if isinstance(code, int) else None)


def decode_answer(status: int, body: bytes, endpoint: str) -> dict:
    """A unary call's JSON answer; raises EtcdError for an error status or bad JSON."""
    if status != 200:
        raise error_from(status, body, endpoint)
    try:
        answer = json.loads(body)
    except ValueError:
        raise EtcdError(f"etcd at {endpoint}: not a JSON answer: {body[:200]!r}") from None
    if not isinstance(answer, dict):
        raise EtcdError(f"etcd at {endpoint}: not a JSON object: {body[:200]!r}")
    return answer


def stream_message(line: bytes, endpoint: str) -> dict:
    """One line of a streaming answer: its `result`, or an EtcdError for its `error`."""
    try:
        message = json.loads(line)
    except ValueError:
        raise EtcdError(f"etcd at {endpoint}: not a JSON message: {line[:200]!r}") from None
    return stream_result(message, endpoint)


def stream_result(message: dict, endpoint: str) -> dict:
    if not isinstance(message, dict):
        raise EtcdError(f"etcd at {endpoint}: not a JSON object: {message!r:.200}")
    if "error" in message:
        error = message["error"]
        raise EtcdError(f"etcd at {endpoint}: {error.get('message', error)}", code=error.get("grpc_code"))
    return message.get("result", {})


def take_lines(buffer: bytearray, max_bytes: int = MAX_ANSWER_BYTES) -> list[bytes]:
    """Remove and return the complete lines at the start of `buffer` (without their b"\\n");
    raises EtcdError when an unfinished line is over max_bytes."""
    lines = []
    while (end := buffer.find(b"\n")) >= 0:
        line = bytes(buffer[:end]).strip()
        del buffer[:end + 1]
        if line:
            lines.append(line)
    if len(buffer) > max_bytes:
        raise EtcdError(f"a message over {max_bytes} bytes")
    return lines


def request_bytes(endpoint: str, path: str, body: dict) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); raises EtcdError."""
    host, _, port = endpoint.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EtcdError(f"etcd endpoint: expected HOST:PORT, got {endpoint!r}")
    return host, int(port)


class Endpoints:
    """The members to ask, in order: the one that answered last first, then the rest as given."""

    def __init__(self, endpoints: list[str]):
        if not endpoints:
            raise EtcdError("etcd endpoints: expected at least one HOST:PORT, got none")
        for endpoint in endpoints:
            parse_endpoint(endpoint)
        self.all = list(endpoints)
        self.current = 0

    def order(self) -> list[str]:
        return self.all[self.current:] + self.all[:self.current]

    def answered(self, endpoint: str) -> None:
        self.current = self.all.index(endpoint)

    def skip(self, endpoint: str) -> None:
        """`endpoint` failed: the next one comes first."""
        self.current = (self.all.index(endpoint) + 1) % len(self.all)


def tried(failures: list[tuple[str, str]]) -> str:
    return "; ".join(f"{endpoint}: {reason}" for endpoint, reason in failures)


# --- the connection (asyncio) ---------------------------------------------------------------

class _Answer:
    """The response parser's sink: the status and the body as it comes, bounded by the caller."""

    def __init__(self):
        self.status = 0
        self.body = bytearray()
        self.head = False
        self.done = False

    def on_response(self, head) -> None:
        if head.status >= 200:
            self.status = head.status
            self.head = True

    def on_response_body(self, data) -> None:
        self.body += data

    def on_response_end(self) -> None:
        self.done = True


class _Exchange:
    """One request on one fresh connection; `sent` once the request is on its way."""

    def __init__(self, endpoint: str, tls: tuple[ssl.SSLContext, str | None] | None = None):
        self.endpoint = endpoint
        self.tls = tls
        self.sent = False
        self.answer = _Answer()
        self.parser = http1.parsers_for("httptools")[1](self.answer)
        self.parser.expect(b"POST", False)
        self.reader = self.writer = None

    async def send(self, path: str, body: dict) -> None:
        host, port = parse_endpoint(self.endpoint)
        if self.tls is None:
            self.reader, self.writer = await asyncio.open_connection(host, port)
        else:
            context, server_name = self.tls
            self.reader, self.writer = await asyncio.open_connection(host, port, ssl=context,
                                                                     server_hostname=server_name or host)
        self.writer.write(request_bytes(self.endpoint, path, body))
        self.sent = True
        await self.writer.drain()

    async def read_more(self) -> None:
        """Feed the next piece of the answer; raises OSError when the connection ends first."""
        data = await self.reader.read(READ_BYTES)
        if not data:
            raise ConnectionResetError("connection closed before the answer ended")
        self.parser.feed(data)
        if len(self.answer.body) > MAX_ANSWER_BYTES:
            raise EtcdError(f"etcd at {self.endpoint}: an answer over {MAX_ANSWER_BYTES} bytes")

    async def whole_answer(self) -> tuple[int, bytes]:
        while not self.answer.done:
            await self.read_more()
        return self.answer.status, bytes(self.answer.body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.parser.close()


class _Stream:
    """A streaming answer on one connection, read a batch of JSON messages at a time."""

    def __init__(self, endpoint: str, tls: tuple[ssl.SSLContext, str | None] | None = None):
        self.exchange = _Exchange(endpoint, tls)

    async def open(self, path: str, body: dict, timeout_s: float) -> None:
        """Sends the request and reads the head; raises EtcdError for an error answer."""
        async def head() -> None:
            await self.exchange.send(path, body)
            while not self.exchange.answer.head:
                await self.exchange.read_more()
            if self.exchange.answer.status != 200:
                status, raw = await self.exchange.whole_answer()
                raise error_from(status, raw, self.exchange.endpoint)
        await asyncio.wait_for(head(), timeout_s)

    async def messages(self, idle_s: float) -> list[dict]:
        """The next messages (at least one); TimeoutError after idle_s without one."""
        answer = self.exchange.answer
        while not (lines := take_lines(answer.body)):
            if answer.done:
                raise ConnectionResetError("the stream ended")
            await asyncio.wait_for(self.exchange.read_more(), idle_s)
        return [stream_message(line, self.exchange.endpoint) for line in lines]

    def close(self) -> None:
        self.exchange.close()


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, LbError):
        return exc.message
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class EtcdClient:
    """An etcd v3 client over the JSON gateway. `close()` stops the keepalives it started."""

    def __init__(self, endpoints: list[str], attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
                 watch_idle_s: float = WATCH_IDLE_S, tls: ssl.SSLContext | None = None,
                 server_name: str | None = None):
        """`tls`: a client context (lb/tls.py etcd_context), each endpoint's certificate checked
        for `server_name` or, by default, the endpoint's host."""
        self.endpoints = Endpoints(endpoints)
        self.tls = (tls, server_name) if tls is not None else None
        self.attempt_timeout_s = attempt_timeout_s
        self.watch_idle_s = watch_idle_s
        self._keepalives: set[asyncio.Task] = set()

    async def _call(self, path: str, body: dict, repeatable: bool = True, attempt_s: float | None = None) -> dict:
        """One request, failing over between endpoints (each given `attempt_s`, by default
        attempt_timeout_s); raises EtcdError."""
        failures: list[tuple[str, str]] = []
        for round_ in range(ROUNDS):
            if round_:
                await asyncio.sleep(ROUND_PAUSE_S)
            for endpoint in self.endpoints.order():
                exchange = _Exchange(endpoint, self.tls)
                try:
                    status, raw = await asyncio.wait_for(self._unary(exchange, path, body),
                                                         attempt_s or self.attempt_timeout_s)
                    answer = decode_answer(status, raw, endpoint)
                except EtcdError as exc:
                    if exc.code not in TRY_ELSEWHERE:
                        raise
                    failures.append((endpoint, exc.message))
                    self.endpoints.skip(endpoint)     # the next call, too, starts elsewhere
                    if not repeatable:                # "timed out", "leader changed": it may commit yet
                        raise EtcdError(f"etcd {path}: {exc.message}; the write may have been applied "
                                        f"(re-read before writing again)", code=exc.code) from None
                    continue
                except (OSError, asyncio.TimeoutError, HttpError) as exc:
                    failures.append((endpoint, describe(exc)))
                    self.endpoints.skip(endpoint)     # a hung member must not take every next call
                    if exchange.sent and not repeatable:
                        raise EtcdError(f"etcd {path}: the answer was lost, the write may have been applied "
                                        f"(re-read before writing again); tried {tried(failures)}") from None
                    continue
                self.endpoints.answered(endpoint)
                return answer
        raise EtcdError(f"etcd {path}: no endpoint answered; tried {tried(failures)}")

    @staticmethod
    async def _unary(exchange: _Exchange, path: str, body: dict) -> tuple[int, bytes]:
        try:
            await exchange.send(path, body)
            return await exchange.whole_answer()
        finally:
            exchange.close()

    # --- keys ---

    async def get(self, key: str) -> Range:
        """The key (none or one in `kvs`) and the store's revision."""
        return parse_range(await self._call("/v3/kv/range", key_range(key)))

    async def get_prefix(self, prefix: str) -> Range:
        """Every key starting with `prefix`, in key order, and the store's revision."""
        return parse_range(await self._call("/v3/kv/range", key_range(prefix, prefix=True)))

    async def put(self, key: str, value: bytes | str, lease: int = 0, repeatable: bool = False) -> int:
        """Writes the key (bound to `lease` when given); the store's revision after it.
        `repeatable`: the caller's write may land twice (the same whole value of a key only
        it writes), so a lost answer is tried again elsewhere rather than raised."""
        return revision_of(await self._call("/v3/kv/put", Put(key, value, lease).request(), repeatable=repeatable))

    async def delete(self, key: str, prefix: bool = False) -> int:
        """Deletes the key (every key under it with prefix); the store's revision after it."""
        return revision_of(await self._call("/v3/kv/deleterange", Delete(key, prefix).request(), repeatable=False))

    async def txn(self, compares: list[Compare], success: list, failure: list = ()) -> TxnResult:
        """If every compare holds, the success ops, else the failure ops, atomically."""
        answer = await self._call("/v3/kv/txn", txn_request(compares, success, failure), repeatable=False)
        return TxnResult(bool(answer.get("succeeded", False)), revision_of(answer))

    # --- leases ---

    async def grant(self, ttl_s: int) -> Lease:
        """A lease that expires ttl_s seconds after its last keepalive."""
        # repeated as etcd's own client does: a lease granted twice costs one that expires unused
        answer = await self._call("/v3/lease/grant", {"TTL": str(int(ttl_s))})
        if answer.get("error"):
            raise EtcdError(f"etcd lease grant: {answer['error']}")
        return Lease(int(answer["ID"]), int(answer.get("TTL", ttl_s)))

    async def revoke(self, lease: Lease, within_s: float | None = None) -> None:
        """Ends the lease now; its keys are deleted. A lease already gone is not an error.
        `within_s`: each endpoint gets its share of it (a hung first one must not take it all)."""
        attempt_s = None if within_s is None else min(self.attempt_timeout_s, within_s / len(self.endpoints.all))
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease.id)}, attempt_s=attempt_s)
        except EtcdError as exc:
            if "lease not found" not in exc.message:
                raise

    async def keepalive_once(self, lease: Lease) -> int:
        """Renews the lease once; its TTL. Raises EtcdError when it has expired."""
        # A stream of one message: the gateway ends it when the request body ends.
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease.id)})
        ttl = int(stream_result(answer, "lease keepalive").get("TTL", 0))
        if ttl <= 0:
            raise EtcdError(f"etcd lease {lease.id} has expired")
        return ttl

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left (-1: it has expired or never was)."""
        answer = await self._call("/v3/lease/timetolive", {"ID": str(lease_id)})
        return int(answer.get("TTL", -1))

    def keepalive(self, lease: Lease) -> asyncio.Task:
        """A task that renews the lease every third of its TTL until close(). It ends with an
        EtcdError when the lease has expired or no endpoint renewed it for a whole TTL."""
        task = asyncio.get_running_loop().create_task(self._keep(lease), name=f"etcd keepalive {lease.id}")
        self._keepalives.add(task)
        task.add_done_callback(self._keepalives.discard)
        return task

    async def _keep(self, lease: Lease) -> None:
        renewed = time.monotonic()
        while True:
            try:
                await self.keepalive_once(lease)
                renewed = time.monotonic()
            except EtcdError as exc:
                if "expired" in exc.message or time.monotonic() - renewed >= lease.ttl_s:
                    raise
            await asyncio.sleep(max(lease.ttl_s / 3, 0.1))

    async def close(self) -> None:
        for task in list(self._keepalives):
            task.cancel()
        for task in list(self._keepalives):
            try:
                await task
            except (asyncio.CancelledError, EtcdError):
                pass

    # --- watch ---

    async def watch(self, key: str, start_revision: int = 0, prefix: bool = True) -> AsyncIterator[Event]:
        """The puts and deletes under `key` (the key alone without prefix) from start_revision
        (0: from now on), in revision order, for as long as the caller iterates. A broken or
        silent stream is resumed on the next endpoint after the last event delivered. Raises
        EtcdError when start_revision was compacted (`compact_revision` says from where to
        read again) or when no endpoint answered for ROUNDS rounds."""
        next_revision = start_revision
        failures: list[tuple[str, str]] = []
        while True:
            endpoint = self.endpoints.order()[0]
            create = {**key_range(key, prefix), "start_revision": str(next_revision)}
            stream = _Stream(endpoint, self.tls)
            try:
                await stream.open("/v3/watch", {"create_request": create}, self.attempt_timeout_s)
                while True:
                    for result in await stream.messages(self.watch_idle_s):
                        if result.get("created"):
                            failures.clear()
                            self.endpoints.answered(endpoint)
                            next_revision = next_revision or revision_of(result) + 1
                        check_not_canceled(result, key, next_revision)
                        for event in parse_events(result):
                            yield event
                            next_revision = event.mod_revision + 1
            except EtcdError as exc:
                if exc.code not in TRY_ELSEWHERE:
                    raise
                failures.append((endpoint, exc.message))
            except (OSError, asyncio.TimeoutError, HttpError) as exc:
                failures.append((endpoint, describe(exc)))
            finally:
                stream.close()
            self.endpoints.skip(endpoint)
            if len(failures) >= ROUNDS * len(self.endpoints.all):
                raise EtcdError(f"etcd watch {key}: no endpoint answered; tried {tried(failures)}")
            if failures and len(failures) % len(self.endpoints.all) == 0:
                await asyncio.sleep(ROUND_PAUSE_S)


def check_not_canceled(result: dict, key: str, revision: int) -> None:
    """Raises EtcdError when etcd canceled the watch (a compacted start revision, or else)."""
    compacted = int(result.get("compact_revision", 0))
    if compacted:
        raise EtcdError(f"etcd watch {key}: revision {revision} was compacted; read again and watch from "
                        f"revision {compacted} or later", compact_revision=compacted)
    if result.get("canceled"):
        raise EtcdError(f"etcd watch {key}: canceled by etcd: {result.get('cancel_reason') or 'no reason given'}")
