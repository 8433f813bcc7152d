"""Process helpers for the tools that run lb and watch it from outside (`lb demo`, the bench,
the tests): after an upgrade the new master outlives the old one, its parent, and is
orphaned; a *subreaper* gets it as a child instead of init, so it can be reaped and its
end seen. (Under systemd, systemd is that reaper.)"""

from __future__ import annotations

import ctypes
import os

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
