"""The admin socket: one command a line in, one JSON object a line out.

Every command is a row of `COMMANDS` (words, arguments, usage, handler,
whether it changes state); `help` is generated from the rows, and an unknown
command or a wrong number of arguments answers with the usage. Handlers return
the reply's payload or raise LbError, whose message is the reply's error.

A command that changes state is written to `state_file` (atomically: temp
file, fsync, rename) before the reply goes out, and `load_state` applies that
file over the config at start, so a restart in the middle of a deploy keeps a
drained node drained.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from .config import VERSION_RE, BackendConfig, ConfigError, _build, _Invalid, load_config, parse_duration
from .errors import LbError
from .pool import DRAINED, DRAINING, MAINT, READY, UP
from .stats import WINDOW_S, bucket_quantiles, iso_utc, ms

log = logging.getLogger("lb.admin")

MAX_LINE_BYTES = 4096
IDLE_TIMEOUT_S = 60.0
DEFAULT_WAIT_S = 60.0
WAIT_STATES = {
    "drained": lambda b: b.admin_state == DRAINED,
    "ready": lambda b: b.admin_state == READY,
    "maint": lambda b: b.admin_state == MAINT,
    "up": lambda b: b.health == UP,
}


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    args: tuple[str, ...]          # required argument names
    optional: tuple[str, ...]      # optional argument names, in order
    summary: str
    handler: Callable
    mutates: bool

    @property
    def usage(self) -> str:
        parts = [*self.words, *self.args, *(f"[{name}]" for name in self.optional)]
        return " ".join(parts)


class Admin:
    """Admin commands over a running Proxy, and the state file."""

    def __init__(self, proxy, config_path: str | None):
        self.proxy = proxy
        self.config_path = config_path

    @property
    def pool(self):
        return self.proxy.pool

    # -- one line in, one reply out -------------------------------------------------
    async def execute(self, line: str) -> dict:
        """Run one command line; never raises for bad input."""
        try:
            command, args = parse(line)
            payload = command.handler(self, *args)
            if inspect.isawaitable(payload):
                payload = await payload
            if command.mutates:
                save_state(self.proxy)
            return {"ok": True, **payload}
        except LbError as exc:
            return {"ok": False, "error": exc.message}

    # -- handlers ------------------------------------------------------------------
    def help(self) -> dict:
        return {"commands": [f"{c.usage:<48} {c.summary}" for c in COMMANDS]}

    def show_servers(self) -> dict:
        now = self.proxy.now()
        return {"servers": [b.describe(now) for b in self.pool.backends.values()]}

    def show_server(self, name: str) -> dict:
        return self._server(self.pool.get(name))

    def show_versions(self) -> dict:
        rows = self.pool.version_rows()
        pinning = self.proxy.pinning
        for row in rows:
            version = row["version"]
            row["pinned_requests"] = pinning.pinned_requests[version] if pinning else 0
            row["assignments"] = pinning.assignments[version] if pinning else 0
        if pinning:
            return {"versions": rows, "migrations": [
                {"from": f, "to": t, "direction": d, "count": n}
                for (f, t, d), n in sorted(pinning.migrations.items())]}
        return {"versions": rows}

    def show_stats(self, name: str | None = None) -> dict:
        now = time.monotonic()

        def record(b) -> dict:
            return {"name": b.name, "version": b.version, **b.stats.summary(now)}

        if name is not None:
            return {"stats": record(self.pool.get(name))}
        servers = [record(b) for b in self.pool.backends.values()]
        totals = {key: sum(s[key] for s in servers)
                  for key in ("requests", "2xx", "3xx", "4xx", "5xx", "lb_failures", "connect_errors")}
        proxy_stats = self.proxy.stats
        totals.update(retries=self.proxy.retries, failed=dict(proxy_stats.failed),
                      since=iso_utc(proxy_stats.since))
        return {"stats": {"totals": totals, "servers": servers}}

    def show_latency(self, names: str, window: str) -> dict:
        """Latency of a group of servers over the last WINDOW, their windows merged."""
        window_s = _seconds(window)
        if not 1 <= window_s <= WINDOW_S:
            raise LbError(f"'show latency' expects a WINDOW from 1s to {WINDOW_S}s, got {window!r}")
        backends = [self.pool.get(name) for name in names.split(",") if name]
        now = time.monotonic()
        counts = Counter()
        for backend in backends:
            counts.update(backend.stats.window.counts(now, math.ceil(window_s)))
        p50, p90, p99 = bucket_quantiles(counts, (0.5, 0.9, 0.99))
        return {"latency": {"servers": [b.name for b in backends], "window_s": math.ceil(window_s),
                            "requests": sum(counts.values()),
                            "p50_ms": ms(p50), "p90_ms": ms(p90), "p99_ms": ms(p99)}}

    def drain(self, name: str) -> dict:
        return self._set_state(name, "drain")

    def ready(self, name: str) -> dict:
        return self._set_state(name, "ready")

    def maint(self, name: str) -> dict:
        return self._set_state(name, "maint")

    def _set_state(self, name: str, event: str) -> dict:
        backend = self.pool.get(name)
        self.proxy.set_admin_state(backend, event)
        return self._server(backend)

    def _server(self, backend) -> dict:
        """The reply payload that shows one server."""
        return {"server": backend.describe(self.proxy.now())}

    async def wait(self, name: str, state: str, timeout: str | None = None) -> dict:
        backend = self.pool.get(name)
        reached = WAIT_STATES.get(state)
        if reached is None:
            raise LbError(f"'wait' expects a state of {', '.join(WAIT_STATES)}, got {state!r}")
        timeout_s = _seconds(timeout) if timeout is not None else DEFAULT_WAIT_S
        started = time.monotonic()
        deadline = started + timeout_s
        while not reached(backend):
            if backend.name not in self.pool.backends:
                raise LbError(f"server {name!r} was removed while waiting", 410)
            changed = self.proxy.state_changed
            remaining = deadline - time.monotonic()
            try:
                await asyncio.wait_for(changed.wait(), max(remaining, 0))
            except asyncio.TimeoutError:
                raise LbError(f"timed out after {timeout_s:g}s waiting for {name} to be {state}; "
                              f"it is {backend.admin_state}/{backend.health} with "
                              f"{backend.inflight} in flight and {backend.tunnels} tunnels", 504) from None
        reply = {"waited_s": round(time.monotonic() - started, 3), **self._server(backend)}
        if state == "drained":
            reply["cut"] = backend.drain_cut   # requests and tunnels the deadline closed
        return reply

    def set_version(self, name: str, version: str) -> dict:
        backend = self.pool.get(name)
        _check_version(version)
        backend.version = version
        self.pool.note_version(version)
        self.proxy.notify()
        return self._server(backend)

    def set_weight(self, name: str, weight: str) -> dict:
        backend = self.pool.get(name)
        if not weight.isdigit() or int(weight) > 1000:
            raise LbError(f"'set weight' expects a whole number from 0 to 1000, got {weight!r}")
        backend.set_weight(int(weight))
        self.proxy.notify()
        return self._server(backend)

    def set_target(self, version: str) -> dict:
        _check_version(version)
        self.pool.set_target(version)
        self.proxy.notify()
        return {"versions": self.pool.version_rows()}

    def add_server(self, name: str, address: str, version: str | None = None,
                   weight: str | None = None) -> dict:
        if name in self.pool.backends:
            raise LbError(f"server {name!r} exists already", 409)
        fields = {"name": name, "address": address}
        if version is not None:
            fields["version"] = version
        if weight is not None:
            fields["weight"] = int(weight) if weight.isdigit() else weight
        backend = self.proxy.add_backend(_backend_config(fields))
        backend.admin_state = MAINT
        self.proxy.notify()
        return self._server(backend)

    def del_server(self, name: str) -> dict:
        backend = self.pool.get(name)
        if backend.admin_state not in (DRAINED, MAINT) or not backend.idle:
            raise LbError(f"'del server' expects a server in drained or maint with nothing in "
                          f"flight; {name} is {backend.admin_state} with {backend.inflight} in flight",
                          409)
        self.proxy.remove_backend(backend)
        return self._server(backend)

    def reload(self) -> dict:
        if self.config_path is None:
            raise LbError("this lb was started without a config file; nothing to reload", 409)
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            raise LbError(f"reload refused, the running config stays: {exc.message}") from None
        return {"changed": self.proxy.reload(new)}


def _seconds(text: str) -> float:
    """A TIMEOUT argument: seconds ('30') or a duration ('30s', '2m')."""
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except _Invalid:
        raise LbError(f"expected a TIMEOUT in seconds or a duration (30, 30s, 2m), got {text!r}") from None


def _check_version(version: str) -> None:
    if not VERSION_RE.match(version):
        raise LbError(f"expected a version label of letters, digits, '.', '_' or '-' (max 32), "
                      f"got {version!r}")


def _backend_config(fields: dict) -> BackendConfig:
    """A BackendConfig from admin arguments, validated like the config file."""
    try:
        return _build(BackendConfig, fields, "server", "add server")
    except ConfigError as exc:
        raise LbError(exc.message.replace("add server: server.", "")) from None


COMMANDS = [
    Command(("help",), (), (), "this list", Admin.help, False),
    Command(("show", "servers"), (), (), "every server with state, health and counters", Admin.show_servers, False),
    Command(("show", "server"), ("NAME",), (), "one server", Admin.show_server, False),
    Command(("show", "versions"), (), (), "versions, oldest first, with ready capacity", Admin.show_versions, False),
    Command(("show", "stats"), (), ("NAME",), "totals and per server: codes, failures, p50/p99 over 60 s",
            Admin.show_stats, False),
    Command(("show", "latency"), ("NAME[,NAME...]", "WINDOW"), (), "p50/p90/p99 of those servers together "
            "over the last WINDOW (1s..60s)", Admin.show_latency, False),
    Command(("drain",), ("NAME",), (), "no new requests; in-flight ones finish", Admin.drain, True),
    Command(("wait",), ("NAME", "STATE"), ("TIMEOUT",), "block until drained|ready|maint|up", Admin.wait, False),
    Command(("ready",), ("NAME",), (), "back into service", Admin.ready, True),
    Command(("maint",), ("NAME",), (), "hold out of service", Admin.maint, True),
    Command(("set", "version"), ("NAME", "VERSION"), (), "relabel a server's version", Admin.set_version, True),
    Command(("set", "weight"), ("NAME", "WEIGHT"), (), "0..1000", Admin.set_weight, True),
    Command(("set", "target"), ("VERSION",), (), "declare the newest version", Admin.set_target, True),
    Command(("add", "server"), ("NAME", "HOST:PORT"), ("VERSION", "WEIGHT"), "joins in maint", Admin.add_server, True),
    Command(("del", "server"), ("NAME",), (), "only when drained or maint", Admin.del_server, True),
    Command(("reload",), (), (), "re-read the config file", Admin.reload, True),
]


def parse(line: str) -> tuple[Command, list[str]]:
    """The command row and its arguments. Raises LbError with the usage."""
    words = line.split()
    if not words:
        raise LbError("empty command; try 'help'")
    matches = [c for c in COMMANDS if tuple(words[:len(c.words)]) == c.words]
    if not matches:
        near = [c.usage for c in COMMANDS if c.words[0] == words[0]]
        if near:
            raise LbError(f"usage: {' | '.join(near)}")
        known = sorted({c.words[0] for c in COMMANDS})
        raise LbError(f"unknown command {' '.join(words[:2])!r}; commands: {', '.join(known)} "
                      f"('help' lists their usage)")
    command = max(matches, key=lambda c: len(c.words))
    args = words[len(command.words):]
    if not len(command.args) <= len(args) <= len(command.args) + len(command.optional):
        raise LbError(f"usage: {command.usage}")
    return command, args


# -- the state file ------------------------------------------------------------

def save_state(proxy) -> None:
    """Write the admin state atomically. Raises LbError(500) when it cannot."""
    path = proxy.config.resolve(proxy.config.state_file)
    config_names = {b.name for b in proxy.config.backends}
    state = {"format": 1, "versions": proxy.pool.versions, "servers": {
        b.name: {"state": b.admin_state, "version": b.version, "weight": b.weight,
                 "address": b.address, "added": b.name not in config_names}
        for b in proxy.pool.backends.values()}}
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise LbError(f"the change is made but could not be saved to {path}: {exc.strerror}", 500) from None


def load_state(proxy) -> list[str]:
    """Apply a saved state over the config; returns what it changed, for the log."""
    path = proxy.config.resolve(proxy.config.state_file)
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.error("state file %s unreadable (%s); starting from the config alone", path, exc)
        return []
    applied = []
    for name, saved in state.get("servers", {}).items():
        backend = proxy.pool.backends.get(name)
        if backend is None and saved.get("added"):
            try:
                backend = proxy.add_backend(_backend_config(
                    {"name": name, "address": saved["address"], "version": saved["version"],
                     "weight": saved["weight"]}))
            except (LbError, KeyError):
                continue
        if backend is None:
            continue                          # removed from the config since
        admin_state = saved.get("state", READY)
        backend.admin_state = DRAINED if admin_state == DRAINING else admin_state
        backend.version = saved.get("version", backend.version)
        backend.set_weight(saved.get("weight", backend.weight))
        proxy.pool.note_version(backend.version)
        if backend.admin_state != READY:
            applied.append(f"{name} {backend.admin_state}")
    for version in state.get("versions", []):
        if version in proxy.pool.versions:
            proxy.pool.versions.remove(version)
            proxy.pool.versions.append(version)
    proxy.notify()
    return applied


# -- the Unix socket --------------------------------------------------------------

class AdminServer:
    """The Unix stream socket, created with admin.mode; removed at exit."""

    def __init__(self, admin: Admin, path: str, mode: int):
        self.admin = admin
        self.path = path
        self.mode = mode
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Bind the socket. Raises LbError when another lb is listening on it."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path):
            if _someone_listens(self.path):
                raise LbError(f"another lb is listening on the admin socket {self.path}", 2)
            os.unlink(self.path)              # stale, from a run that crashed
        old_umask = os.umask(0o777 & ~self.mode)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path,
                                                           limit=MAX_LINE_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, self.mode)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_TIMEOUT_S)
                except asyncio.LimitOverrunError:
                    await self._reply(writer, {"ok": False, "error":
                                               f"line longer than {MAX_LINE_BYTES} bytes; closing"})
                    return
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return                    # half a line and gone, or idle: nothing is run
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    await self._reply(writer, {"ok": False, "error": "not UTF-8 text; try 'help'"})
                    continue
                if line.strip():
                    await self._reply(writer, await self.admin.execute(line))
        finally:
            self._clients.discard(writer)
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _someone_listens(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()
