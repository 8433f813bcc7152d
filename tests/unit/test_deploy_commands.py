"""The commands `lb deploy` runs (lb/deploy/commands.py): real shell commands in their own
process group, cancelled as a second Ctrl-C cancels the deploy."""

import asyncio
import io
import os
import signal
import time
from pathlib import Path

import pytest

from lb.deploy.client import StepFailed
from lb.deploy.commands import run_command

WAIT_S = 10.0


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


async def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} after {WAIT_S}s"
        await asyncio.sleep(0.02)


async def test_a_cancelled_command_leaves_no_process_of_its_group(tmp_path):
    pid_file = tmp_path / "pid"
    # the shell and a child in its group, both long-lived; $$ is the group's id (its own session)
    command = f"sleep 60 & echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; wait"
    running = asyncio.create_task(run_command(command, {}, 120, io.StringIO(), "test"))
    await wait_until(pid_file.exists, "the command never started")
    pgid = int(pid_file.read_text())
    try:
        await wait_until(lambda: len(group_members(pgid)) == 2, "the shell and its sleep never both ran")
        running.cancel()                            # a second Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await running
        assert group_members(pgid) == []            # killed before the cancel went on
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)         # without the fix: do not leak it past the test
        except ProcessLookupError:
            pass


async def test_a_command_past_its_timeout_is_killed_and_named(tmp_path):
    with pytest.raises(StepFailed) as info:
        await run_command("echo started; sleep 60", {}, 0.3, io.StringIO(), "test", "--verify-timeout")
    assert info.value.reason == "timed out after 0.3s (--verify-timeout); killed"
    assert info.value.output == ["started"]
