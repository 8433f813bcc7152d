"""The two systemd conventions lb speaks: socket activation and readiness notification.

Socket activation (sd_listen_fds(3)): systemd binds the sockets of `lb.socket`,
starts lb with them open from fd 3 on, and says so in `LISTEN_PID` (this
process), `LISTEN_FDS` (how many) and `LISTEN_FDNAMES` (their names, ':'
separated). Because systemd holds them, `systemctl restart lb` leaves the
listening sockets open: connections queue in the kernel while lb is away
instead of being refused.

Readiness (sd_notify(3)): one datagram of `KEY=value` lines to the Unix socket
named by `NOTIFY_SOCKET` (a leading '@' is the abstract namespace). lb sends
`READY=1` once its workers accept, `RELOADING=1` and `READY=1` around a reload,
`STOPPING=1`, and `MAINPID=` from the new master after an upgrade. Each is the
documented datagram, ten lines of code: a library (systemd-python, sdnotify)
would add a C build or an unmaintained package for no gain.

Neither does anything when lb is not run by systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("lb")

LISTEN_FDS_START = 3


def listen_fds(environ=None) -> list[tuple[int, str]]:
    """The sockets systemd passed to this process, as (fd, name); [] when none were.

    The variables are removed from the environment once read (as sd_listen_fds(1) does),
    so that no process lb starts (a worker, the new master of an upgrade) takes them
    for its own."""
    environ = os.environ if environ is None else environ
    pid, count = environ.get("LISTEN_PID", ""), environ.get("LISTEN_FDS", "")
    names = environ.get("LISTEN_FDNAMES", "")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    if not (pid.isdigit() and int(pid) == os.getpid() and count.isdigit()):
        return []
    labels = names.split(":") if names else []
    return [(fd, labels[i] if i < len(labels) else "unknown")
            for i, fd in enumerate(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))]


def notify(*lines: str, environ=None) -> bool:
    """Send `lines` (e.g. "READY=1") to systemd; False when not under systemd or it failed."""
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(lines).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message, address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", environ.get("NOTIFY_SOCKET"), exc.strerror or exc)
            return False
    return True


def monotonic_usec() -> str:
    """`MONOTONIC_USEC=` for a RELOADING=1 message (systemd 253+ reads it; older ones ignore it)."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
