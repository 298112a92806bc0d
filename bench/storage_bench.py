"""PostgreSQL bytes per job: with content kept, and once retention pruned the content and folded the ledger.

Run:  .venv/bin/python -m bench.storage_bench [--jobs 3000] [--concurrency 16]

The real stack (embedded NATS and PostgreSQL, one control plane, one node agent beside the Ollama double at
zero delay, 16-token answers to a one-line prompt). Sizes are pg_total_relation_size (heap, indexes, TOAST)
per table, before and after the jobs. Then every job and ledger entry is moved 40 days back in time (a
test-only UPDATE: a month cannot be waited for), one retention pass runs with the shipped batch size, and
VACUUM FULL shows what the pruned rows still take (what stays forever per job).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
import psycopg

from bench.load import closed_loop
from bench.stack import bench_stack, wait_all_completed

TABLES = ("jobs", "credit_ledger", "credit_rollups", "credit_ledger_folded", "webhook_deliveries",
          "idempotency_keys", "nodes")


def sizes(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n"
                            " ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND relkind = 'r'").fetchall()
        total = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    out = {name: size for name, size in rows if name in TABLES}
    out["(database)"] = total
    return out


async def submit_all(url: str, key: str, n: int, concurrency: int) -> list[str]:
    ids: list[str] = []
    body = {"model": "bench:1b", "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
            "max_tokens": 64}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        async def one() -> None:
            r = await client.post("/api/v1/jobs", json=body)
            r.raise_for_status()
            ids.append(r.json()["id"])
        await closed_loop(one, n, concurrency)
    return ids


async def run(stack, args: argparse.Namespace) -> None:
    from control_plane.credits.ledger import roll_up
    from control_plane.retention.service import Retention
    from control_plane.settings import Settings
    from control_plane.store import Database

    before = sizes(stack.database_url)
    t0 = time.monotonic()
    ids = await submit_all(stack.url, stack.key, args.jobs, args.concurrency)
    async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
        await wait_all_completed(conn, ids)
    took = time.monotonic() - t0
    await asyncio.sleep(3)  # the control plane's ledger rollup and node-row writes settle
    kept = sizes(stack.database_url)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        ledger_rows = conn.execute("SELECT count(*) FROM credit_ledger WHERE job_id = ANY(%s)", (ids,)).fetchone()[0]
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("UPDATE jobs SET created_at = created_at - interval '40 days',"
                         " completed_at = completed_at - interval '40 days'")
            conn.execute("UPDATE credit_ledger SET created_at = created_at - interval '40 days'")
    db = await Database.open(stack.database_url)
    try:
        await roll_up(db)
        retention = Retention(db, Settings(database_url=stack.database_url, retention_max_batches=10_000))
        t1 = time.monotonic()
        report = await retention.tick(pause_s=0)
        prune_s = time.monotonic() - t1
    finally:
        await db.close()
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("VACUUM FULL")
    pruned = sizes(stack.database_url)

    n = len(ids)
    print(f"{n:,} jobs in {took:.1f} s; {ledger_rows / n:.1f} ledger rows per job; retention pass: "
          f"{report.jobs_pruned:,} jobs pruned, {report.ledger_folded:,} ledger entries folded in {prune_s:.1f} s")
    print("| table | bytes per job, content kept | bytes per job after retention (VACUUM FULL) |")
    print("| --- | --- | --- |")
    for name in (*TABLES, "(database)"):
        a = (kept.get(name, 0) - before.get(name, 0)) / n
        b = (pruned.get(name, 0) - before.get(name, 0)) / n
        print(f"| {name} | {a:,.0f} | {b:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with bench_stack(nodes=1, slots=64) as stack:
        asyncio.run(run(stack, args))


if __name__ == "__main__":
    main()
