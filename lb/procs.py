"""Process helpers: how lb starts a process of its own (a worker, an upgrade's new master), and
what the tools that run lb and watch it from outside (`lb demo`, the bench, the tests) use:
after an upgrade the new master outlives the old one, its parent, and is orphaned; a
*subreaper* gets it as a child instead of init, so it can be reaped and its end seen.
(Under systemd, systemd is that reaper.)"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import lb

# lb's own code first on PYTHONPATH: a child runs the code this process runs (for an
# upgrade's new master, the code now on disk there), installed or not.
CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lb.__file__)))


def start_lb_process(module: str, args: list[str], **popen) -> subprocess.Popen:
    """Run `python -m module args` as a process of lb's own, isolated from the folder lb was
    started in: `-P` puts no unsafe path (that folder, for `-m`) on sys.path, so a `yaml.py`
    left there never runs inside lb, and the child works in `/`, so nothing it does can
    depend on that folder (every path it gets is absolute). Not `-I`: it would drop
    PYTHONPATH, which an operator may set, and which carries CODE_ROOT. Raises OSError."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [CODE_ROOT, env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-P", "-m", module, *args], env=env, cwd="/", **popen)

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
