"""The shell commands `lb deploy` runs (--update, --rollback, --verify, --check): each in its own
session, its output to the deploy log line by line, bounded by a timeout, its last lines kept
for the report."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import deque

from ..core.stats import iso_utc
from .client import StepFailed

KILL_GRACE_S = 5.0          # SIGTERM to SIGKILL for a command past its timeout
OUTPUT_TAIL_LINES = 20


async def run_command(command: str, env: dict, timeout_s: float, log, label: str,
                      timeout_flag: str = "--update-timeout") -> None:
    """Run a shell command in its own session; its output goes to the deploy log.
    Raises StepFailed (exit status, or timed out: `timeout_flag` says which bound) with the
    output's last lines. Cancelled, it kills the command's process group first."""
    proc = await asyncio.create_subprocess_shell(
        command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True)
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)

    async def pump():
        async for raw in proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(text)
            log.write(f"{iso_utc(time.time())} {label} | {text}\n")
            log.flush()

    pumping = asyncio.create_task(pump())
    try:
        code = await asyncio.wait_for(proc.wait(), timeout_s)
    except asyncio.TimeoutError:
        await _kill_group(proc)
        await _finish(pumping)
        raise StepFailed(f"timed out after {timeout_s:g}s ({timeout_flag}); killed", list(tail)) from None
    except asyncio.CancelledError:
        # a second Ctrl-C cancels the deploy mid-command: the command's processes must not
        # outlive lb deploy (shielded: a further cancel does not stop the kill halfway)
        await asyncio.shield(_kill_group(proc))
        pumping.cancel()
        raise
    await _finish(pumping)
    if code != 0:
        raise StepFailed(f"exited with status {code}", list(tail))


async def _kill_group(proc) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
            return
        except asyncio.TimeoutError:
            continue


async def _finish(task: asyncio.Task) -> None:
    """Let the output pump drain; a background child still holding the pipe is not waited for."""
    try:
        await asyncio.wait_for(asyncio.shield(task), 1.0)
    except asyncio.TimeoutError:
        task.cancel()
