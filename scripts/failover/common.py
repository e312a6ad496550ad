"""Shared by every module of the driver: the monotonic clock all times are
measured with, its stderr log, and a home for fire-and-forget tasks (the
event loop keeps only weak references to them)."""

from __future__ import annotations

import asyncio
import sys
import time

NOW = time.monotonic
# Tasks started without awaiting them: the loop keeps only weak references.
TASKS: set[asyncio.Task] = set()


def spawn(coro) -> asyncio.Task:
    t = asyncio.create_task(coro)
    TASKS.add(t)
    t.add_done_callback(TASKS.discard)
    return t


def log(*a: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] driver:", *a, file=sys.stderr, flush=True)
