"""Time from a node's death (SIGKILL mid-job) to its job running and completing on another node.

Run: .venv/bin/python -m bench.failover_bench [--interval 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from bench.stack import bench_stack

BODY = {"model": "bench:1b", "messages": [{"role": "user", "content": "a long story"}], "max_tokens": 20}


async def one_round(stack, client: httpx.AsyncClient) -> tuple[float, float]:
    job_id = (await client.post("/api/v1/jobs", json=BODY)).json()["id"]
    while True:
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["status"] == "processing":
            break
        await asyncio.sleep(0.01)
    victim = stack.node_procs.pop(job["node_id"])
    victim.kill()
    killed = time.perf_counter()
    replaced = None
    while True:
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if replaced is None and job.get("attempt", 1) >= 2 and job["status"] == "processing":
            replaced = time.perf_counter() - killed
        if job["status"] in ("completed", "failed"):
            assert job["status"] == "completed", job
            return replaced if replaced is not None else float("nan"), time.perf_counter() - killed
        await asyncio.sleep(0.01)


async def run(stack, rounds: int) -> None:
    async with httpx.AsyncClient(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=60) as c:
        for i in range(rounds):
            placed, done = await one_round(stack, c)
            print(f"round {i + 1}: re-placed on another node after {placed:.2f} s, completed after {done:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=5.0, help="node advertisement interval (s)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # Each job streams 20 tokens at 50 ms: about 1 s of generation on the surviving node.
    with bench_stack(nodes=args.rounds + 1, slots=1, double_args=("--delay-ms", "50"),
                     advertise_interval=args.interval) as stack:
        print(f"advertise interval {args.interval:g} s (offline after 3 missed intervals)")
        asyncio.run(run(stack, args.rounds))


if __name__ == "__main__":
    main()
