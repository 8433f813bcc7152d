"""The admin socket: one command a line in, one JSON object a line out.

The command table and argument parsing are lb/core/commands.py; the handlers
here read and change the pool only through the control plane (`Control`).
Handlers return the reply's payload or raise CommandError, whose message is
the reply's error. A command that changes state is written to the state file
(statefile.py) before the reply goes out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import math
import os
import socket
import struct
import time
from collections import Counter

import lb

from ..core.commands import (backend_config, check_version, help_lines, parse, parse_maxconn, parse_timeout,
                             parse_weight)
from ..core.errors import CommandError, ConfigError, LbError
from ..core.nodes import DRAINED, MAINT, READY, UP
from ..core.stats import WINDOW_S, bucket_quantiles, iso_utc, ms
from ..core.values import format_hostport
from .. import tls
from ..core import statusview
from ..core.reload import running_config
from ..files import load_config
from .cluster import cluster_off
from .statefile import save_state

log = logging.getLogger("lb.admin")
audit_log = logging.getLogger("lb.audit")

# Changes that stay on this lb in cluster mode: its own config file (each lb reads its own).
LOCAL_ONLY = {("reload",)}
MAX_LINE_BYTES = 4096
IDLE_TIMEOUT_S = 60.0
DEFAULT_WAIT_S = 60.0
WAIT_STATES = {
    "drained": lambda b: b.admin_state == DRAINED,
    "ready": lambda b: b.admin_state == READY,
    "maint": lambda b: b.admin_state == MAINT,
    "up": lambda b: b.health == UP,
}


class Admin:
    """The handlers of the admin commands, over the control plane."""

    def __init__(self, control, config_path: str | None, gate=None, service=None):
        self.control = control
        self.config_path = config_path
        # The service manager (lb/process/systemd.py: notify), told of a reload; None outside
        # lb serve. Passed in: the control plane does not import the processes' modules.
        self.service = service
        # The master's upgrade (lb/process/upgrade.py), the one gate every command passes: while
        # it is frozen commands wait, once it handed over they are relayed to the new master.
        self.gate = gate

    @property
    def pool(self):
        return self.control.pool

    # -- one line in, one reply out -------------------------------------------------
    async def execute(self, line: str, sender: str = "lb") -> dict:
        """Run one command line; never raises for bad input. `sender` says who sent it, for
        the audit log (`uid 1000 pid 4242` from the socket's peer, or the signal's name)."""
        reply = await self._execute(line)
        audit(line, sender, reply)
        return reply

    async def _execute(self, line: str) -> dict:
        """The reply to one command line. While an upgrade hands over, a command waits for
        its outcome; once a new master serves, commands that still reach this one (on
        connections opened before) are relayed to it."""
        gate = self.gate
        try:
            if gate is not None and gate.new_master is not None:
                return await self._relay(line, gate.new_master)
            command, args = parse(line)
            if gate is not None and gate.frozen and not command.replaces_master:
                await gate.settled()
                return await self._execute(line)  # relayed, if the upgrade went through
            await self.control.synced()
            await self.control.applied()      # and what the reports changed, every worker routes by
            if command.mutates and command.words not in LOCAL_ONLY and self.control.desired is not None:
                return await self._change_fleet(command, args)
            payload = HANDLERS[command.words](self, *args)
            if inspect.isawaitable(payload):
                payload = await (payload if command.replaces_master else self._until_handed_over(payload))
            if command.mutates:
                save_state(self.control)
                await self.control.applied()  # the reply means every worker routes by the change
            return {"ok": True, **payload}
        except LbError as exc:
            return {"ok": False, "error": exc.message}
        except _HandedOver:
            return await self._execute(line)       # a `wait` the old master can no longer answer

    async def _change_fleet(self, command, args: list[str]) -> dict:
        """Cluster mode: the change goes to etcd's desired state (lb/control/desired.py), and the
        reply waits until every member of the fleet applied it, or names those that did not."""
        desired = self.control.desired
        payload, revision = await desired.change(lambda: HANDLERS[command.words](self, *args))
        save_state(self.control)
        await self.control.applied()
        try:
            agreed = await self._until_handed_over(desired.agreed(revision))
        except _HandedOver:           # the change is made: not run again on the new master
            agreed = {"revision": revision, "applied": [], "not_applied": [],
                      "error": "this lb was upgraded while waiting for the fleet; 'show cluster' shows who applied it"}
        return {"ok": True, **payload, "cluster": agreed}

    async def _until_handed_over(self, awaitable):
        """The command's result, unless an upgrade hands over first (then _HandedOver: the
        command goes to the new master, which knows how it ends)."""
        if self.gate is None:
            return await awaitable
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait({task, self.gate.handed_over}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise _HandedOver

    async def _relay(self, line: str, new_master) -> dict:
        """The new master's reply to `line`. Raises CommandError when it does not answer."""
        try:
            reader, writer = await asyncio.open_unix_connection(new_master.admin, limit=1 << 24)
            try:
                writer.write(line.rstrip("\r\n").encode() + b"\n")
                await writer.drain()
                raw = await reader.readline()
            finally:
                writer.close()
            if raw:
                return json.loads(raw)
            why = "it closed the connection without a reply"
        except OSError as exc:
            why = exc.strerror or str(exc)
        raise CommandError(f"lb was upgraded (new master pid {new_master.pid}) and its admin socket "
                           f"{new_master.admin} did not answer: {why}; retry")

    # -- handlers ------------------------------------------------------------------
    def help(self) -> dict:
        return {"commands": help_lines()}

    def show_servers(self) -> dict:
        now = self.control.now()
        return {"servers": [b.describe(now) for b in self.pool.backends.values()],
                "queued": self.control.queued, "panic": self.pool.panic}

    def show_server(self, name: str) -> dict:
        return self._server(self.pool.get(name))

    def show_versions(self) -> dict:
        rows = self.pool.version_rows()
        pins = self.control.pins
        on = self.control.pinning_on
        for row in rows:
            version = row["version"]
            row["pinned_requests"] = pins["pinned_requests"][version] if on else 0
            row["assignments"] = pins["assignments"][version] if on else 0
        if on:
            return {"versions": rows, "migrations": [
                {"from": f, "to": t, "direction": d, "count": n}
                for (f, t, d), n in sorted(pins["migrations"].items())]}
        return {"versions": rows}

    def show_assets(self) -> dict:
        """Skew protection's index and store (lb/control/assets.py)."""
        assets = self.control.assets
        return {"assets": assets.rows(self.pool.version_capacity()), "store": assets.info()}

    def show_info(self) -> dict:
        link = self.control.link
        predecessor = link.predecessor
        workers = link.info()
        # Times as epoch seconds (for scripts) and, beside them, ISO 8601 UTC (for people).
        return {"pid": os.getpid(), "version": lb.__version__, "started": round(self.control.started, 3),
                "started_iso": iso_utc(self.control.started),
                "workers": [{**worker, "started_iso": iso_utc(worker["started"])} for worker in workers],
                "worker_restarts": link.restarts, "upgrades": self.control.upgrades,
                "panic": self.pool.panic, "panics": self.control.panics,
                "old_master": {"pid": predecessor.pid} if predecessor is not None else None,
                # where clients reach lb, and the header that names a version (lb deploy --verify's
                # LB_URL and LB_VERSION_HEADER)
                "listeners": [{"address": format_hostport(*listener.address), "tls": listener.tls is not None,
                               "redirect_https": listener.redirect_https}
                              for listener in self.control.config.listen],
                "pinning_header": self.control.config.pinning.header,
                # whether anyone may reach a version with no users yet by naming it (lb deploy
                # --verify warns when no one may: its canary's smoke test would reach the old one)
                "override_from": bool(self.control.config.skew.override_from),
                # cluster mode: whether etcd answers now (lb serves on either way)
                "cluster": {**self.control.cluster.info(), **self.control.desired.info()}
                if self.control.cluster is not None else None}

    async def show_cluster(self) -> dict:
        """The members listed in etcd (lb/control/cluster.py), read when asked."""
        if self.control.cluster is None:
            raise cluster_off()
        return await self.control.cluster.members()

    def show_certs(self) -> dict:
        now, listen = time.time(), self.control.config.listen
        return {"certs": [{"listener": format_hostport(*listen[i].address),
                           "certs": [info.to_dict(now) for info in infos]}
                          for i, infos in sorted(self.control.certs.items())]}

    def show_stats(self, name: str | None = None) -> dict:
        now = time.monotonic()

        def record(b) -> dict:
            return {"name": b.name, "version": b.version, **b.stats.summary(now)}

        if name is not None:
            return {"stats": record(self.pool.get(name))}
        servers = [record(b) for b in self.pool.backends.values()]
        totals = {key: sum(s[key] for s in servers)
                  for key in ("requests", "2xx", "3xx", "4xx", "5xx", "lb_failures", "connect_errors")}
        pool_stats = self.control.stats
        totals.update(retries=pool_stats.retries, failed=dict(pool_stats.failed), queued=self.control.queued,
                      since=iso_utc(pool_stats.since))
        return {"stats": {"totals": totals, "servers": servers}}

    def show_latency(self, names: str, window: str, raw: str | None = None) -> dict:
        """Latency of a group of servers over the last WINDOW, their windows merged; with
        `raw`, the bucket counts too (lb deploy merges a fleet's from them)."""
        if raw is not None and raw != "raw":
            raise CommandError(f"'show latency' expects 'raw' or nothing after the WINDOW, got {raw!r}")
        window_s = parse_timeout(window)
        if not 1 <= window_s <= WINDOW_S:
            raise CommandError(f"'show latency' expects a WINDOW from 1s to {WINDOW_S}s, got {window!r}")
        backends = [self.pool.get(name) for name in names.split(",") if name]
        now = time.monotonic()
        counts = Counter()
        for backend in backends:
            counts.update(backend.stats.window.counts(now, math.ceil(window_s)))
        p50, p90, p99 = bucket_quantiles(counts, (0.5, 0.9, 0.99))
        latency = {"servers": [b.name for b in backends], "window_s": math.ceil(window_s),
                   "requests": sum(counts.values()), "p50_ms": ms(p50), "p90_ms": ms(p90), "p99_ms": ms(p99)}
        if raw:
            latency["buckets"] = {str(bucket): count for bucket, count in sorted(counts.items())}
        return {"latency": latency}

    def note_deploy(self, text: str) -> dict:
        """A deploy's progress (lb/deploy/progress.py), kept for the status page: nothing else
        reads it, and the next one replaces it."""
        try:
            note = statusview.clean_note(json.loads(text))
        except (ValueError, RecursionError) as exc:
            raise CommandError(f"'note deploy' expects a deploy's JSON object on one line (spaces written as "
                               f"\\u0020): {exc}") from None
        self.control.deploy_note = (time.time(), note)
        return {}

    def drain(self, name: str) -> dict:
        return self._set_state(name, "drain")

    def ready(self, name: str) -> dict:
        return self._set_state(name, "ready")

    def maint(self, name: str) -> dict:
        return self._set_state(name, "maint")

    def _set_state(self, name: str, event: str) -> dict:
        node = self.pool.get(name)
        self.control.set_admin_state(node, event)
        return self._server(node)

    def _server(self, node) -> dict:
        """The reply payload that shows one server."""
        return {"server": node.describe(self.control.now())}

    async def wait(self, name: str, state: str, timeout: str | None = None) -> dict:
        node = self.pool.get(name)
        reached = WAIT_STATES.get(state)
        if reached is None:
            raise CommandError(f"'wait' expects a state of {', '.join(WAIT_STATES)}, got {state!r}")
        timeout_s = parse_timeout(timeout) if timeout is not None else DEFAULT_WAIT_S
        started = time.monotonic()
        deadline = started + timeout_s
        while not reached(node):
            if node.name not in self.pool.backends:
                raise CommandError(f"server {name!r} was removed while waiting")
            changed = self.control.state_changed
            remaining = deadline - time.monotonic()
            try:
                await asyncio.wait_for(changed.wait(), max(remaining, 0))
            except asyncio.TimeoutError:
                raise CommandError(f"timed out after {timeout_s:g}s waiting for {name} to be {state}; "
                                   f"it is {node.admin_state}/{node.health} with "
                                   f"{node.inflight} in flight and {node.tunnels} tunnels") from None
        reply = {"waited_s": round(time.monotonic() - started, 3), **self._server(node)}
        if state == "drained":
            reply["cut"] = node.drain_cut   # requests and tunnels the deadline closed
        return reply

    def set_version(self, name: str, version: str) -> dict:
        node = self.pool.get(name)
        check_version(version)
        self.control.set_version(node, version)     # a claim the next check must confirm
        return self._server(node)

    def set_weight(self, name: str, weight: str) -> dict:
        node = self.pool.get(name)
        self.control.set_weight(node, parse_weight(weight))
        return self._server(node)

    def set_maxconn(self, name: str, count: str) -> dict:
        node = self.pool.get(name)
        self.control.set_max_conns(node, parse_maxconn(count))
        return self._server(node)

    def set_target(self, version: str) -> dict:
        check_version(version)
        self.control.set_target(version)
        return {"versions": self.pool.version_rows()}

    def add_server(self, name: str, address: str, version: str | None = None,
                   weight: str | None = None) -> dict:
        if name in self.pool.backends:
            raise CommandError(f"server {name!r} exists already")
        fields = {"name": name, "address": address}
        if version is not None:
            fields["version"] = version
        if weight is not None:
            fields["weight"] = int(weight) if weight.isdigit() else weight
        node = self.control.add_node(backend_config(fields))
        if version is not None:
            self.control.set_version(node, node.version)    # a claim the checks must confirm
        return self._server(node)

    def del_server(self, name: str) -> dict:
        node = self.pool.get(name)
        if node.admin_state not in (DRAINED, MAINT) or not node.idle:
            raise CommandError(f"'del server' expects a server in drained or maint with nothing in "
                               f"flight; {name} is {node.admin_state} with {node.inflight} in flight")
        self.control.remove_node(node)
        return self._server(node)

    def reload(self) -> dict:
        if self.config_path is None:
            raise CommandError("this lb was started without a config file; nothing to reload")
        self._notify("RELOADING=1", self.service.monotonic_usec() if self.service else "")
        try:
            try:
                new = load_config(self.config_path)
                # The master reads the PEM files (the workers may not be allowed to: `user:`)
                # and loads every certificate before anything changes: a bad one refuses it all.
                files = tls.read_pem_files(running_config(new, self.control.config))
                new = dataclasses.replace(new, pem_files=files)
                certs, warnings = tls.check(running_config(new, self.control.config), time.time())
            except ConfigError as exc:
                raise CommandError(f"reload refused, the running config stays: {exc.message}") from None
            changed = self.control.reload(new)
            changed += tls.changes(self.control.certs, certs) + [f"warning: {w}" for w in warnings]
            self.control.certs = certs
            return {"changed": changed}
        finally:
            self._notify("READY=1")

    def _notify(self, *fields: str) -> None:
        if self.service is not None:
            self.service.notify(*fields)

    async def upgrade(self) -> dict:
        if self.gate is None:
            raise CommandError("'upgrade' needs lb serve's master")
        return await self.gate.run()


# The handler of every row of lb/core/commands.py's COMMANDS, by the row's words.
HANDLERS = {
    ("help",): Admin.help,
    ("show", "servers"): Admin.show_servers,
    ("show", "server"): Admin.show_server,
    ("show", "info"): Admin.show_info,
    ("show", "cluster"): Admin.show_cluster,
    ("note", "deploy"): Admin.note_deploy,
    ("show", "certs"): Admin.show_certs,
    ("show", "versions"): Admin.show_versions,
    ("show", "assets"): Admin.show_assets,
    ("show", "stats"): Admin.show_stats,
    ("show", "latency"): Admin.show_latency,
    ("drain",): Admin.drain,
    ("wait",): Admin.wait,
    ("ready",): Admin.ready,
    ("maint",): Admin.maint,
    ("set", "version"): Admin.set_version,
    ("set", "weight"): Admin.set_weight,
    ("set", "target"): Admin.set_target,
    ("set", "maxconn"): Admin.set_maxconn,
    ("add", "server"): Admin.add_server,
    ("del", "server"): Admin.del_server,
    ("reload",): Admin.reload,
    ("upgrade",): Admin.upgrade,
}


def audit(line: str, sender: str, reply: dict) -> None:
    """One line in the audit log for a command that changes something (`Command.audited`),
    as HAProxy logs runtime API changes: who, what, and how it went. A line that is no
    command changed nothing and is not logged; nor are the read-only commands."""
    try:
        command, _ = parse(line)
    except CommandError:
        return
    if command.audited:
        outcome = "ok" if reply.get("ok") else f"error: {reply.get('error')}"
        audit_log.info("%s: %s -> %s", sender, _printable(" ".join(line.split())), _printable(outcome))


def _printable(text: str) -> str:
    """`text` with control characters escaped: a command line cannot forge a log line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def peer_credentials(sock: socket.socket) -> str:
    """Who is at the other end of a Unix socket, from the kernel (SO_PEERCRED): the
    process's uid and pid at the time it connected."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):     # SO_PEERCRED is Linux's; elsewhere, say so
        return "uid ? pid ?"
    pid, uid, _gid = struct.unpack("3i", raw)
    return f"uid {uid} pid {pid}"


# -- the Unix socket --------------------------------------------------------------

class AdminServer:
    """The Unix stream socket, created with admin.mode; removed at exit."""

    def __init__(self, admin: Admin, path: str, mode: int):
        self.admin = admin
        self.path = path
        self.mode = mode
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._inode: int | None = None        # of the socket file this server made

    def check_free(self) -> None:
        """Raises CommandError when another lb is listening on the socket (checked before the
        workers start, and again when binding)."""
        if os.path.exists(self.path) and _someone_listens(self.path):
            raise CommandError(f"another lb is listening on the admin socket {self.path}")

    async def start(self, replace: bool = False) -> None:
        """Bind the socket. Raises CommandError when another lb is listening on it, unless
        `replace` (a new master at an upgrade takes the path over from the old one)."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path) and not replace:
            self.check_free()
            os.unlink(self.path)              # stale, from a run that crashed
        # The socket is created with its mode (umask), never chmod-ed after the fact: the path
        # could be something else by then. It is bound and listening under a temporary name and
        # renamed into place, so whoever sees the path can connect (the path means "lb is up").
        temporary = f"{self.path}.{os.getpid()}.tmp"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~self.mode)
        try:
            if os.path.lexists(temporary):
                os.unlink(temporary)
            sock.bind(temporary)
            sock.listen(64)
            self._inode = os.stat(temporary).st_ino
            os.rename(temporary, self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE_BYTES)

    async def reclaim(self) -> None:
        """Take the path back when it is not this server's socket (a new master that failed
        after it renamed its own over it)."""
        try:
            ours = os.stat(self.path).st_ino == self._inode
        except FileNotFoundError:
            ours = False
        if not ours:
            log.warning("admin socket %s: taking the path back", self.path)
            previous = self._server
            await self.start(replace=True)
            if previous is not None:
                previous.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        sender = peer_credentials(writer.get_extra_info("socket"))
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
                    await self._reply(writer, await self.admin.execute(line, sender))
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
            if os.stat(self.path).st_ino == self._inode:   # not a new master's, after an upgrade
                os.unlink(self.path)
        except FileNotFoundError:
            pass


class _HandedOver(Exception):
    """An upgrade handed over while a command waited."""


def _someone_listens(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()
