"""Native job API: submit-to-completed latency and completed jobs/s at concurrency 1 and 32, vs. the double directly.

Run: .venv/bin/python -m bench.jobs_bench [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio

import httpx

from bench.load import closed_loop
from bench.stack import bench_stack, percentile, wait_all_completed

BODY = {"model": "bench:1b", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}


async def run_jobs(url: str, key: str, jobs: int, concurrency: int, poll_s: float) -> tuple[list[float], float]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        async def one() -> None:
            job_id = (await client.post("/api/v1/jobs", json=BODY)).json()["id"]
            while True:
                status = (await client.get(f"/api/v1/jobs/{job_id}")).json()["status"]
                if status == "completed":
                    return
                if status in ("failed", "cancelled"):
                    raise RuntimeError(f"job {job_id} {status}")
                await asyncio.sleep(poll_s)
        return await closed_loop(one, jobs, concurrency)


async def run_direct(url: str, jobs: int, concurrency: int) -> tuple[list[float], float]:
    body = {"model": "bench:1b", "messages": BODY["messages"], "stream": False, "options": {"num_predict": 16}}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def one() -> None:
            (await client.post("/api/chat", json=body)).raise_for_status()
        return await closed_loop(one, jobs, concurrency)


async def run_throughput(url: str, key: str, database_url: str, jobs: int, concurrency: int) -> tuple[list[float], float]:
    """Submit `jobs` at `concurrency` without polling, then read completion times from PostgreSQL."""
    import psycopg

    headers = {"Authorization": f"Bearer {key}"}
    ids: list[str] = []
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        async def one() -> None:
            r = await client.post("/api/v1/jobs", json=BODY)
            if r.status_code != 200:
                raise RuntimeError(f"submit failed: {r.status_code} {r.text}")
            ids.append(r.json()["id"])
        await closed_loop(one, jobs, concurrency)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        first, last = await wait_all_completed(conn, ids)
        cur = await conn.execute(
            "SELECT extract(epoch FROM completed_at - created_at) * 1000 FROM jobs WHERE id = ANY(%s)", (ids,))
        latencies = [float(r[0]) for r in await cur.fetchall()]
    return latencies, len(ids) / (last - first).total_seconds()


def report(label: str, latencies: list[float], rate: float) -> None:
    print(f"{label:<44} p50 {percentile(latencies, 50):7.2f} ms   p99 {percentile(latencies, 99):7.2f} ms"
          f"   {rate:8.1f} /s   (n={len(latencies)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    with bench_stack() as stack:
        asyncio.run(run_jobs(stack.url, stack.key, 50, 4, 0.002))  # warm-up
        n1 = max(200, args.jobs // 4)
        report("double directly, /api/chat, c=1", *asyncio.run(run_direct(stack.double_url, n1, 1)))
        report("Infernet submit->completed (poll 1 ms), c=1",
               *asyncio.run(run_jobs(stack.url, stack.key, n1, 1, 0.001)))
        report("double directly, /api/chat, c=32", *asyncio.run(run_direct(stack.double_url, args.jobs, 32)))
        report("Infernet submit at c=32, completion from DB",
               *asyncio.run(run_throughput(stack.url, stack.key, stack.database_url, args.jobs, 32)))


if __name__ == "__main__":
    main()
