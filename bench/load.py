"""Closed-loop load for the benchmarks: one call repeated n times over c concurrent workers, each call timed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def closed_loop(call: Callable[[], Awaitable[object]], n: int, concurrency: int) -> tuple[list[float], float]:
    """Await `call()` n times, `concurrency` at a time (each worker starts its next call when one ends);
    returns each call's latency in milliseconds and the calls completed per second."""
    latencies: list[float] = []
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            t0 = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, n / (time.perf_counter() - start)
