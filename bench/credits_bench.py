"""Credits under load: what the per-account reservation lock costs when 32 submits come from one account.

Two parts:
  1. PostgreSQL alone (embedded, default durability): 32 connections run the submit transaction
     (insert the job + lock the account + reserve) as fast as they can — all from one account, from 32
     accounts (the lock never contends), and without any reservation (the skeleton's single INSERT).
  2. The whole stack as real processes: POST /api/v1/jobs at concurrency 32 from one account and from 32
     accounts, every job run on a zero-latency double and persisted; completed jobs/s from PostgreSQL.

Run: .venv/bin/python -m bench.credits_bench [--seconds 5] [--jobs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.stack import bench_stack, percentile, wait_all_completed
from control_plane.accounts.service import create_account
from control_plane.credits import ledger
from control_plane.embedded import start_postgres
from control_plane.lib.ids import new_id
from control_plane.settings import Settings
from control_plane.store import Database
from control_plane.store.database import jsonb
from control_plane.store.migrate import apply_migrations

PAYLOAD = {"messages": [{"role": "user", "content": "Say hello"}], "params": {"max_tokens": 16}, "stream": False}
BODY = {"model": "bench:1b", "messages": PAYLOAD["messages"], "max_tokens": 16}


async def _submit_tx(db: Database, settings: Settings, account_id: str, reserve: bool) -> None:
    job_id = new_id("job")
    params = {"id": job_id, "account_id": account_id, "api_key_id": None, "kind": "chat", "model": "bench:1b",
              "request": jsonb(PAYLOAD), "pinned_node_id": None, "claimed_by": "bench", "claim_secs": 10.0,
              "wallclock_secs": 300.0, "request_id": None}
    if not reserve:
        await db.fetchone("insert_job", params)
        return
    async with db.transaction() as tx:
        await tx.fetchone("insert_job", params)
        await ledger.reserve(tx, settings, account_id=account_id, api_key_id=None, job_id=job_id, model="bench:1b",
                             payload=PAYLOAD)


async def db_part(url: str, seconds: float) -> None:
    settings = Settings(database_url=url)
    db = await Database.open(url, min_size=32, max_size=32)
    try:
        accounts = [(await create_account(db, new_id("bench"), credits=10**12))["id"] for _ in range(32)]
        for label, reserve, spread in (("no reservation (skeleton INSERT)", False, False),
                                       ("reserve, 32 accounts", True, True),
                                       ("reserve, one account", True, False)):
            latencies: list[float] = []
            stop = time.perf_counter() + seconds

            async def worker(i: int) -> None:
                account = accounts[i] if spread else accounts[0]
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    await _submit_tx(db, settings, account, reserve)
                    latencies.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(32)))
            rate = len(latencies) / (time.perf_counter() - t0)
            print(f"  db  {label:<36} c=32  {rate:8.0f} submits/s   p50 {percentile(latencies, 50):6.2f} ms"
                  f"   p99 {percentile(latencies, 99):6.2f} ms")
        started = time.perf_counter()
        folded = await ledger.roll_up(db)
        print(f"  db  rollup of {folded} accounts' entries: {(time.perf_counter() - started) * 1000:.1f} ms")
        started = time.perf_counter()
        for _ in range(200):
            await ledger.account_credits(db, accounts[0])
        print(f"  db  balance read after rollup: {(time.perf_counter() - started) * 1000 / 200:.2f} ms")
    finally:
        await db.close()


async def stack_part(url: str, keys: list[str], database_url: str, jobs: int) -> tuple[float, float, list[float]]:
    import psycopg

    ids: list[str] = []
    submit_ms: list[float] = []
    todo = iter(range(jobs))
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker(w: int) -> None:
            headers = {"Authorization": f"Bearer {keys[w % len(keys)]}"}
            for _ in todo:
                t0 = time.perf_counter()
                r = await client.post("/api/v1/jobs", json=BODY, headers=headers)
                submit_ms.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"submit failed: {r.status_code} {r.text}")
                ids.append(r.json()["id"])
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(32)))
        submit_rate = len(ids) / (time.perf_counter() - t0)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        first, last = await wait_all_completed(conn, ids)
    return submit_rate, len(ids) / (last - first).total_seconds(), submit_ms


def _keys(env_db: str, prefix: str, n: int) -> list[str]:
    env = dict(os.environ, INFERNET_DATABASE_URL=env_db)
    return [subprocess.run([__import__("sys").executable, "-m", "control_plane.cli", "keys", "create", "--account",
                            f"{prefix}{i}", "--credits", str(10**12)], env=env, check=True, capture_output=True,
                           text=True).stdout.strip() for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--skip-stack", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="infernet-credits-bench-"))
    os.chmod(root, 0o755)
    pg, url = start_postgres(root)
    try:
        apply_migrations(url)
        print("PostgreSQL only: the submit transaction")
        asyncio.run(db_part(url, args.seconds))
    finally:
        pg.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    if args.skip_stack:
        return
    print("Whole stack: POST /api/v1/jobs at c=32, completion read from PostgreSQL")
    with bench_stack() as stack:
        one = _keys(stack.database_url, "one", 1)
        many = _keys(stack.database_url, "many", 32)
        asyncio.run(stack_part(stack.url, one, stack.database_url, 100))  # warm-up
        for label, keys in (("32 accounts", many), ("one account", one), ("32 accounts", many), ("one account", one)):
            submit_rate, done_rate, submit_ms = asyncio.run(stack_part(stack.url, keys, stack.database_url, args.jobs))
            print(f"  http {label:<12} c=32  submits {submit_rate:6.0f} /s (p50 {percentile(submit_ms, 50):6.1f} ms,"
                  f" p99 {percentile(submit_ms, 99):6.1f} ms)   completed {done_rate:6.0f} jobs/s")


if __name__ == "__main__":
    main()
