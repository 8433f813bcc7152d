"""The event loop every lb process runs on (the master, a worker, the demo, a bench)."""

from __future__ import annotations

import asyncio


def run_async(coro):
    """Run a coroutine on uvloop; returns its result."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.run(coro)
    return uvloop.run(coro)
