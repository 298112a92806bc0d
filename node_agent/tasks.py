"""Stopping a background task for certain, even when something inside it swallows the cancellation."""

from __future__ import annotations

import asyncio

#: How often a cancellation is repeated while the task has not ended.
RECANCEL_EVERY_S = 1.0


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel `task` and wait until it has ended, cancelling again every RECANCEL_EVERY_S.

    A cancellation can be lost: on Python 3.11 `asyncio.wait_for` returns its inner result when that result and the
    cancellation land together, and a library may catch CancelledError. A loop that lost its cancellation runs on,
    so a single cancel followed by an unbounded wait would wait forever (a node that never stops)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_EVERY_S)
    if not task.cancelled():
        task.exception()  # retrieved: the task's own failure was logged where it happened, if anywhere
