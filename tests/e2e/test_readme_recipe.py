"""The README's manual recipe (section "Draining a node: the admin socket": drain, wait
drained, update, set version, ready, wait up), run as written: the commands are read from
README.md, each `lb ctl` line runs as a subprocess word for word from a folder where
`run/lb.sock` is the test lb's admin socket, and the "... update NODE to VERSION ..." line
restarts that node's backend as that version. Users hit lb throughout.

Only `-c /etc/lb/lb.yaml` is replaced (by the test lb's config): the test cannot write /etc."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import LB_SCRIPT, ROOT, Backend, Lb, get, steady_load, wait_for, wait_for_requests

SECTION = "## Draining a node: the admin socket"
UPDATE_LINE = re.compile(r"^#\s*\.\.\.\s*update (\S+) to (\S+)\s*\.\.\.\s*$")
README_SOCKET = "run/lb.sock"
README_CONFIG = "/etc/lb/lb.yaml"


def recipe_lines(readme: str) -> list[str]:
    """The lines of the first ```sh block of SECTION; AssertionError when there is none."""
    start = readme.find("\n" + SECTION + "\n")
    assert start >= 0, f"README.md has no section {SECTION!r}"
    end = readme.find("\n## ", start + 1)
    section = readme[start:end if end >= 0 else len(readme)]
    block = re.search(r"^```sh\n(.*?)^```$", section, re.S | re.M)
    assert block, f"README.md's section {SECTION!r} has no ```sh block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def update_step(lines: list[str]) -> tuple[str, str]:
    """The node and version of the recipe's '# ... update NODE to VERSION ...' line."""
    found = [m.groups() for m in map(UPDATE_LINE.match, lines) if m]
    assert len(found) == 1, f"the recipe needs one '# ... update NODE to VERSION ...' line: {lines}"
    return found[0]


def ctl_words(line: str, config_path: Path) -> list[str]:
    """A recipe line's words as the shell splits them (comments dropped), the config replaced."""
    words = shlex.split(line, comments=True)
    assert words[:2] == ["lb", "ctl"], f"the recipe runs only `lb ctl` commands, got {line!r}"
    return [LB_SCRIPT] + [str(config_path) if w == README_CONFIG else w for w in words[1:]]


def test_the_readme_recipe_parses():
    lines = recipe_lines((ROOT / "README.md").read_text())
    assert update_step(lines) == ("web3", "v2")
    commands = [shlex.split(line, comments=True) for line in lines if not UPDATE_LINE.match(line)]
    assert all(words[:2] == ["lb", "ctl"] for words in commands), commands


async def test_the_readme_recipe_as_written_puts_the_node_back_on_the_new_version(spawn, tmp_path):
    lines = recipe_lines((ROOT / "README.md").read_text())
    node, version = update_step(lines)
    backends = {name: spawn(Backend, name) for name in ("web1", "web2", node)}
    lb = spawn(Lb, tmp_path, [b.config() for b in backends.values()], health={"interval": "200ms"},
               slow_start="0s")
    # The operator's folder: its run/lb.sock is the test lb's admin socket (a short path).
    folder = Path(tempfile.mkdtemp(prefix="lbr", dir="/tmp"))
    (folder / "run").symlink_to(lb.socket_path.parent)

    def run(line: str) -> None:
        words = ctl_words(line, lb.config_path)
        result = subprocess.run(words, cwd=folder, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{line!r} exited {result.returncode}: {result.stdout}{result.stderr}"
        assert README_SOCKET in line or README_CONFIG in line, f"{line!r} names no lb"

    async with steady_load(lb, 6) as load:
        await wait_for_requests(load, 100)
        # Slow requests in flight on every node (least_conn spreads them): the drain has to wait.
        slow = ThreadPoolExecutor(6)
        answers = [slow.submit(get, lb.port, "/slow?ms=1500") for _ in range(6)]
        await asyncio.to_thread(wait_for, lambda: lb.server(node)["inflight"] >= 1, 5, f"a request on {node}")
        for line in lines:
            if UPDATE_LINE.match(line):
                server = lb.server(node)                               # the recipe drained it first
                assert (server["state"], server["inflight"]) == ("drained", 0), server
                port = backends[node].port
                backends[node].stop()                                  # the update: stop...
                backends[node] = spawn(Backend, node, version, port=port)   # ...and start the new one
            else:
                await asyncio.to_thread(run, line)
        # As the recipe ends, the node is back: no waiting here beyond the recipe's own.
        server = lb.server(node)
        assert (server["state"], server["health"], server["version"]) == ("ready", "up", version), server
        done = len(load.records)
        await asyncio.to_thread(wait_for, lambda: any(r.node == node and r.version == version
                                                      for r in load.records[done:]),
                                10, f"{node} to serve {version}")
        await wait_for_requests(load, len(load.records) + 100)
    slow.shutdown()
    assert [answer.result().status for answer in answers] == [200] * 6
    assert load.failures == []
    assert all(r.status == 200 for r in load.records)
    log = lb.stderr_path.read_text()
    # The recipe labels the node itself: lb never had to adopt the version it reported.
    assert "VERSION ADOPTED" not in log and "version_mismatch" not in log, log
    assert f"set version {node} {version} -> ok" in log, log
