"""Native job API: submit-to-completed latency and completed jobs/s at concurrency 1 and 32, vs. the double directly.

Run: .venv/bin/python -m bench.jobs_bench [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from bench.stack import bench_stack, percentile

BODY = {"model": "bench:1b", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}


async def run_jobs(url: str, key: str, jobs: int, concurrency: int, poll_s: float) -> tuple[list[float], float]:
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    todo = iter(range(jobs))
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        async def worker():
            for _ in todo:
                t0 = time.perf_counter()
                job_id = (await client.post("/api/v1/jobs", json=BODY)).json()["id"]
                while True:
                    status = (await client.get(f"/api/v1/jobs/{job_id}")).json()["status"]
                    if status == "completed":
                        break
                    if status in ("failed", "cancelled"):
                        raise RuntimeError(f"job {job_id} {status}")
                    await asyncio.sleep(poll_s)
                latencies.append((time.perf_counter() - t0) * 1000)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, jobs / elapsed


async def run_direct(url: str, jobs: int, concurrency: int) -> tuple[list[float], float]:
    body = {"model": "bench:1b", "messages": BODY["messages"], "stream": False, "options": {"num_predict": 16}}
    latencies: list[float] = []
    todo = iter(range(jobs))
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def worker():
            for _ in todo:
                t0 = time.perf_counter()
                (await client.post("/api/chat", json=body)).raise_for_status()
                latencies.append((time.perf_counter() - t0) * 1000)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, jobs / elapsed


def report(label: str, latencies: list[float], rate: float) -> None:
    print(f"{label:<44} p50 {percentile(latencies, 50):7.2f} ms   p99 {percentile(latencies, 99):7.2f} ms"
          f"   {rate:8.1f} /s   (n={len(latencies)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    with bench_stack() as stack:
        asyncio.run(run_jobs(stack.url, stack.key, 50, 4, 0.002))  # warm-up
        for conc, poll in ((1, 0.001), (32, 0.005)):
            n = args.jobs if conc > 1 else max(200, args.jobs // 4)
            report(f"double directly, /api/chat, c={conc}", *asyncio.run(run_direct(stack.double_url, n, conc)))
            report(f"Infernet submit->completed (poll {poll * 1000:g} ms), c={conc}",
                   *asyncio.run(run_jobs(stack.url, stack.key, n, conc, poll)))


if __name__ == "__main__":
    main()
