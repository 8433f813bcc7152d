"""`lb serve`: the master. It wires the control plane to the workers, in the foreground until
SIGTERM/SIGINT, and hands everything to a new master at an upgrade.

The master binds the listeners once (or takes them from systemd socket activation,
or from the old master at an upgrade) and never touches request bytes: it owns the
control plane (pool, admin socket, state file, checks, /metrics) and the worker
processes (lb/process/arbiter.py), which carry all traffic on the inherited
listening sockets. The control plane meets the workers through the one interface
of lb/core/planes.py: their merged reports go to `Control.on_report`; views,
reloads and cuts go to every worker.

One listening socket is shared by every worker, not one SO_REUSEPORT socket each:
the kernel resets the connections queued on a reuseport socket when it closes, so
a worker that exits or is replaced, and the old master's workers at an upgrade,
would fail the clients waiting in its queue. A shared socket closes only with its
last holder, and the new master holds it before the old one lets go.

Signals (`SIGNALS`): SIGTERM/SIGINT stop gracefully, SIGHUP reloads, SIGUSR2 upgrades
(the `upgrade` command: lb/process/upgrade.py), SIGUSR1 reopens the access log file.
systemd hears READY=1, RELOADING=1, STOPPING=1 and, from a new master, MAINPID=.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import time

from . import privileges, tls
from .process import systemd
from .control.admin import Admin, AdminServer
from .control.metrics import MetricsServer
from .control.plane import Control
from .control.statefile import load_state
from .core.config import LISTEN_BACKLOG, Config
from .core.errors import LbError
from .core.values import format_hostport
from .files import atomic_write, store_dir
from .process.arbiter import Arbiter, worker_count
from .process.handoff import Predecessor, receive
from .process.upgrade import Upgrade

log = logging.getLogger("lb")


def failure_message(exc: BaseException) -> str:
    """What `lb serve` prints when it cannot start (and a new master tells the old one)."""
    if isinstance(exc, LbError):
        return exc.message
    if isinstance(exc, OSError):
        return f"cannot listen: {exc.strerror or exc}"
    return str(exc)


def _address(host: str, port: int) -> tuple[int, tuple]:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    return family, address


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, inheritable by the workers. Raises OSError."""
    family, address = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def _take(available: list[socket.socket], host: str, port: int) -> socket.socket | None:
    """The socket of `available` bound to host:port (removed from the list), or None."""
    family, address = _address(host, port)
    for sock in available:
        if sock.family == family and sock.getsockname()[:2] == address[:2]:
            available.remove(sock)
            return sock
    return None


def systemd_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed (socket activation). Raises LbError for one that
    is not a listening TCP socket."""
    sockets = []
    for fd, name in systemd.listen_fds():
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) \
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise LbError(f"systemd passed fd {fd} ({name}) that is not a listening TCP socket")
        sock.setblocking(False)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def take_sockets(config: Config, available: list[socket.socket], origin: str) -> tuple[list, socket.socket | None]:
    """The listeners of `config` (and the /metrics socket) from `available`, binding what is
    missing. What is left in `available` is the caller's to refuse or close. Raises OSError."""
    made: list[socket.socket] = []
    try:
        listeners = []
        for listener in config.listen:
            host, port = listener.address
            sock = _take(available, host, port)
            if sock is None:
                sock = bind(host, port)
                made.append(sock)
            else:
                log.info("listening on %s: socket from %s", format_hostport(host, port), origin)
            listeners.append(sock)
        metrics = None
        if config.metrics.listen:
            metrics = _take(available, *config.metrics.listen)
            if metrics is None:
                metrics = bind(*config.metrics.listen)
                made.append(metrics)
    except OSError:
        for sock in made:
            sock.close()
        raise
    return listeners, metrics


def config_args(config: Config, config_path: str | None) -> list[str]:
    """`lb serve`'s arguments for the new master of an upgrade to find this config: the file
    (an absolute path), or for the embedded one, the folder its relative paths resolve
    against (the new master starts in /, not in the folder this one was started from)."""
    if config_path is not None:
        return ["-c", config_path]
    return ["--runtime-dir", config.runtime_dir]


class Master:
    """The master of `lb serve`: its start, its signals, its stop, and its upgrade."""

    def __init__(self, config: Config, config_path: str | None, upgrade_fd: int | None = None,
                 pidfile: str | None = None):
        self.config = config
        self.config_path = config_path
        self.upgrade_fd = upgrade_fd
        self.pidfile = pidfile            # an absolute path, or None
        self.upgrade: Upgrade | None = None
        self.metrics_sock: socket.socket | None = None

    async def run(self) -> None:
        """Serve until a stop signal (or until a new master took over), then finish gracefully.

        Raises LbError when the admin socket is taken or a config does not fit, OSError when
        a port is, RuntimeError when a worker cannot start."""
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        inherited = None
        if self.upgrade_fd is not None:
            inherited = await receive(self.upgrade_fd)
        try:
            await self._start(inherited)
        except (LbError, OSError, RuntimeError) as exc:
            if inherited is not None:
                inherited.send("error", failure_message(exc))
            raise
        await self.stop.wait()
        if self.upgrade.successor is not None:
            await self._retire()
        else:
            await self._stop()

    async def _start(self, inherited) -> None:
        # The master reads the PEM files for the workers, which may drop to `user:`.
        config = self.config = dataclasses.replace(self.config, pem_files=tls.read_pem_files(self.config))
        identity = privileges.workers_identity(config)
        if identity is not None and config.pinning.mode == "version" and config.skew.store_bytes > 0:
            try:                              # the workers write the asset store's copies
                privileges.hand_over_dir(store_dir(config), identity)
            except OSError as exc:
                log.warning("skew: cannot make %s %s's (%s); assets are learned without copies",
                            store_dir(config), identity.user, exc)
        loop = self.loop
        control = self.control = Control(config, loop)
        control.certs, warnings = tls.check(config, time.time())     # before anything is bound
        for warning in warnings:
            log.warning("certificate: %s", warning)
        if inherited is not None:             # the old master's live state, not its state file
            said = control.restore(inherited.state, control.now())
            log.info("upgrade: taking over from pid %d%s", inherited.state["pid"],
                     f" ({', '.join(said)})" if said else "")
        else:
            restored = load_state(control)
            if restored:
                log.info("state file: %s", ", ".join(restored))
        if control.desired is not None:   # the fleet's state, over the file's, before anyone connects
            await control.desired.catch_up_at_start()
        self.upgrade = Upgrade(loop, self)
        admin = self.admin = Admin(control, self.config_path, self.upgrade, systemd)
        admin_server = self.admin_server = AdminServer(admin, config.resolve(config.admin.socket),
                                                       config.admin.mode)
        if inherited is None:
            admin_server.check_free()     # before any worker serves a client for a doomed lb
            self._check_pidfile()
            available, origin = systemd_sockets(), "systemd"
        else:
            available, origin = inherited.sockets, f"pid {inherited.state['pid']}"
        listeners, self.metrics_sock = take_sockets(config, available, origin)
        for sock in available:
            if inherited is None:
                raise LbError(f"systemd passed a socket on {format_hostport(*sock.getsockname()[:2])} that "
                              f"the config names in neither listen nor metrics.listen")
            sock.close()                  # no longer in the config: the old workers let go of it too
        workers = self.workers = Arbiter(config, loop, listeners, control.on_report,
                                         worker_count(config.workers), identity)
        control.attach(workers)
        if inherited is not None:
            workers.adopt(Predecessor(inherited, workers))
        metrics = self.metrics = MetricsServer(control, self.metrics_sock, admin) if self.metrics_sock else None
        control.place_nodes()             # nodes in service before the first client can connect
        # Signals are ours before anything shows lb is up (a SIGHUP's default action is to exit).
        for signum, action in SIGNALS.items():
            loop.add_signal_handler(signum, action, self)
        try:
            await workers.start()
            if metrics is not None:
                await metrics.start()
            # The admin socket's path shows lb up: it is taken once the workers serve (and at an
            # upgrade, renamed over the old master's socket as the last step, nothing can fail after).
            await admin_server.start(replace=inherited is not None)
        except BaseException:
            workers.predecessor = None            # a failed new master leaves the old one alone
            await workers.shutdown(0)
            raise
        control.start()                   # checks once the listeners are bound: no probe's source
                                          # port can take a listening port first
        addresses = ", ".join(format_hostport(h, p) + (" (https)" if listener.tls else " (redirects to https)"
                                                       if listener.redirect_https else "")
                              for listener, (h, p) in zip(config.listen, workers.addresses))
        log.info("lb listening on %s with %d backends, %d workers (http: %s); admin socket %s",
                 addresses, len(control.pool.backends), workers.count, config.http, admin_server.path)
        if inherited is not None:
            inherited.send("serving", {"pid": os.getpid(), "admin": admin_server.path, "workers": workers.info()})
            self._write_pidfile()         # this master has taken over: the old one leaves the file alone
            systemd.notify(f"MAINPID={os.getpid()}", "READY=1", f"STATUS=upgraded from pid {inherited.state['pid']}")
        else:
            self._write_pidfile()
            systemd.notify("READY=1")

    async def _stop(self) -> None:
        log.info("stopping: finishing requests in flight (up to %.0fs)", self.config.drain.timeout)
        systemd.notify("STOPPING=1")
        await self.control.leave_cluster()       # out of the fleet before the workers wind down
        await self.admin_server.close()
        if self.metrics is not None:
            await self.metrics.close()
        await self.workers.shutdown(self.config.drain.timeout)
        await self.control.stop()
        self._remove_pidfile()
        log.info("stopped")

    async def _retire(self) -> None:
        """A new master serves: the workers finish what they carry, the admin socket relays to
        the new master meanwhile, and then this one exits."""
        log.info("upgraded: pid %d serves; the old workers finish their connections (up to %.0fs)",
                 self.upgrade.successor.proc.pid, self.config.drain.timeout)
        await self.workers.shutdown(self.config.drain.timeout)
        self.upgrade.successor.close()
        await self.admin_server.close()
        log.info("old master done")

    # -- the pid file: the pid of the master that serves -------------------------------------
    # Written once a master serves (a fresh one, or a new one that took over at an upgrade),
    # removed at a clean stop; an old master that handed over leaves it to its successor.
    def _check_pidfile(self) -> None:
        """Raises LbError when the pid file could not be written, before anything serves."""
        if self.pidfile is not None and not os.access(os.path.dirname(self.pidfile), os.W_OK):
            raise LbError(f"--pidfile {self.pidfile}: cannot write in {os.path.dirname(self.pidfile)}")

    def _write_pidfile(self) -> None:
        if self.pidfile is None:
            return
        try:
            atomic_write(self.pidfile, f"{os.getpid()}\n", mode=0o644)
        except OSError as exc:            # checked at start: lb serves on, and says so
            log.error("--pidfile %s: cannot write it: %s", self.pidfile, exc.strerror or exc)

    def _remove_pidfile(self) -> None:
        """Removed only while it still names this master (not a file someone else wrote since)."""
        if self.pidfile is None:
            return
        try:
            with open(self.pidfile, encoding="ascii") as handle:
                if handle.read().strip() == str(os.getpid()):
                    os.unlink(self.pidfile)
        except (OSError, UnicodeDecodeError):
            pass

    # -- the upgrade (the old master's side is lb/process/upgrade.py; the new one's is `_start`
    # with `inherited`): what it needs of this master ---------------------------------------
    def successor_args(self) -> list[str]:
        """`lb serve`'s arguments for the new master, besides its end of the handoff channel."""
        return config_args(self.config, self.config_path) + (["--pidfile", self.pidfile] if self.pidfile else [])

    def handed_sockets(self) -> list[socket.socket]:
        """The sockets the new master takes over: the listeners, then /metrics."""
        return [*self.workers.listeners, *([self.metrics_sock] if self.metrics_sock else [])]

    # -- signals ------------------------------------------------------------------------------
    def _signalled_stop(self) -> None:
        self.stop.set()

    def _signalled_reload(self) -> None:
        self.loop.create_task(self._command("reload", "SIGHUP"))

    def _signalled_upgrade(self) -> None:
        self.loop.create_task(self._command("upgrade", "SIGUSR2"))

    async def _command(self, line: str, why: str) -> None:
        reply = await self.admin.execute(line, why)
        if not reply["ok"]:
            log.error("%s %s: %s", why, line, reply["error"])
        elif line == "reload":
            log.info("%s reload: %s", why, "; ".join(reply["changed"]) or "no change")

    def _reopen_logs(self) -> None:
        log.info("SIGUSR1: the workers reopen the access log file")
        target, identity = self.config.access_log, self.workers.identity
        if identity is not None and target not in ("stdout", "off"):
            try:                          # the workers, no longer root, open it by name
                privileges.hand_over(self.config.resolve(target), identity)
            except OSError as exc:
                log.error("SIGUSR1: cannot make %s %s's: %s", self.config.resolve(target), identity.user,
                          exc.strerror or exc)
        self.workers.reopen_logs()


# What each signal to the master does (the workers ignore all but SIGTERM: worker.py).
SIGNALS = {
    signal.SIGTERM: Master._signalled_stop,
    signal.SIGINT: Master._signalled_stop,
    signal.SIGHUP: Master._signalled_reload,
    signal.SIGUSR2: Master._signalled_upgrade,
    signal.SIGUSR1: Master._reopen_logs,
}


async def serve(config: Config, config_path: str | None = None, upgrade_fd: int | None = None,
                pidfile: str | None = None) -> None:
    await Master(config, config_path, upgrade_fd, pidfile).run()
