"""Rate-limit overhead per admitted request: local leases vs. one PostgreSQL upsert per request, and the router.

Run: .venv/bin/python -m bench.ratelimit_bench [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from bench.load import closed_loop
from bench.stack import percentile
from control_plane.accounts.auth import Principal
from control_plane.accounts.service import create_key, ensure_account
from control_plane.embedded import start_postgres
from control_plane.lib.logging import configure_logging
from control_plane.ratelimit.limiter import RateLimiter
from control_plane.routing.router import Router
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database
from control_plane.store.migrate import apply_migrations
from protocol.messages import Advertisement, ModelInfo


def report(name: str, latencies: list[float], rate: float) -> None:
    print(f"{name:<58} p50 {percentile(latencies, 50):7.3f} ms  p99 {percentile(latencies, 99):7.3f} ms"
          f"  {rate:9.0f}/s")


async def main(requests: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="infernet-bench-rl-"))
    server, url = start_postgres(root)
    try:
        apply_migrations(url)
        db = await Database.open(url, min_size=4, max_size=40)
        acct = await ensure_account(db, "bench")
        key = await create_key(db, acct["id"])
        principal = Principal(key_id=key.key_id, account_id=acct["id"])
        for concurrency in (1, 32):
            # Default plan (600/min, 2M tokens/min): leases of 30 requests / 100,000 tokens, mostly local.
            limiter = RateLimiter(db, Settings(rate_limit_rpm=10**9, rate_limit_tpm=10**12))
            lat, rate = await closed_loop(lambda: limiter.admit(principal, tokens=530), requests, concurrency)
            report(f"admit(), leased (limit 1e9/min), concurrency {concurrency}", lat, rate)
            # The alternative: one upsert per request (lease size 1).
            window = limiter.window_start() + 60 * (concurrency + 7)
            params = {"key_id": key.key_id, "window_start": window, "dim": "requests", "need": 1, "ask": 1,
                      "limit": 10**9}
            lat, rate = await closed_loop(lambda: db.fetchone("ratelimit_lease", params), requests, concurrency)
            report(f"one ratelimit_lease upsert per request, concurrency {concurrency}", lat, rate)
        await db.close()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    registry = NodeRegistry()
    for i in range(1000):
        registry.observe(Advertisement(
            node_id=f"n{i}", agent_version="0", engine="ollama", state="online", slots=4,
            active_jobs=i % 5,
            models=(ModelInfo("qwen2.5:7b", True, tokens_per_second=90.0 + i % 7),
                    ModelInfo("qwen2.5:14b", True, tokens_per_second=60.0), ModelInfo("qwen2.5:72b", True, 30.0))))
    router = Router(registry)
    msgs = [{"role": "user", "content": "Write a Python function that parses ISO 8601 dates and test it."}]
    lat = []
    for _ in range(2000):
        t0 = time.perf_counter()
        router.route(msgs)
        lat.append((time.perf_counter() - t0) * 1000)
    report("router.route() over 1,000 nodes, 3-model pool (classify + score)", lat, 2000 / (sum(lat) / 1000))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    configure_logging("console", "warning")
    asyncio.run(main(parser.parse_args().requests))
