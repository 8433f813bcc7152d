"""What a supervisor does for lb, for the tests and the bench that run lb and watch it from
outside, as systemd does in production: start it socket-activated, reap it, see it end.
After an upgrade the new master outlives the old one, its parent, and is orphaned; a
*subreaper* gets it as a child instead of init, so it can be reaped and its end seen.
The bench imports this file too (bench/deploy_under_load.py, bench/sampling_profile.py)."""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphaned descendants of this process become its children (Linux). False if refused."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def gone(pid: int) -> bool:
    """The process has exited: reaped here if it was a child of this one, or a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def children(pid: int) -> list[int]:
    """The child processes of `pid` (a master's workers)."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
    except FileNotFoundError:
        return []
    return found


# What systemd does between fork and exec, for running lb socket-activated without systemd
# (the tests, the bench): the sockets moved to fd 3 onwards (by way of high numbers, so
# that no move overwrites a socket still to be moved), and the variables naming the very
# process that execs lb.
_ACTIVATE = """\
import fcntl, os, sys
high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[1].split(",")]
for n, fd in enumerate(high):
    os.dup2(fd, 3 + n)
    os.close(fd)
os.environ.update(LISTEN_FDS=str(len(high)), LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=sys.argv[2])
os.execv(sys.executable, [sys.executable, "-m", "lb.cli", *sys.argv[3:]])
"""


def activated_command(fds: list[int], names: list[str], args: list[str]) -> list[str]:
    """The command that runs `lb ARGS` with the listening sockets `fds` as systemd's socket
    activation passes them. Start it with pass_fds=fds."""
    return [sys.executable, "-c", _ACTIVATE, ",".join(map(str, fds)), ":".join(names), *args]
