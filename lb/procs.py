"""How lb starts a process of its own (a worker, an upgrade's new master). What the tools that
run lb and watch it from outside need (a subreaper, socket activation) is the tests' and the
bench's: tests/e2e/supervise.py."""

from __future__ import annotations

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
