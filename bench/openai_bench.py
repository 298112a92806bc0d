"""Non-streamed `/v1/chat/completions` at concurrency 1 and 32, vs. calling the Ollama double directly.

Run: .venv/bin/python -m bench.openai_bench [--requests 600] [--nodes 1]

Each Infernet request is a job: inserted, placed over NATS, run by a node agent on the double (zero delay,
16 tokens), recorded in PostgreSQL, and answered only once its row is written. The client is httpx in this
process, the same for both paths; every process shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio

import httpx

from bench.load import closed_loop
from bench.stack import bench_stack, percentile

MODEL = "bench:1b"
MESSAGES = [{"role": "user", "content": "Say hello"}]


async def run(client: httpx.AsyncClient, path: str, body: dict, requests: int,
              concurrency: int) -> tuple[list[float], float]:
    async def one() -> None:
        r = await client.post(path, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{path} answered {r.status_code}: {r.text}")

    return await closed_loop(one, requests, concurrency)


async def measure(stack, requests: int) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    direct_body = {"model": MODEL, "messages": MESSAGES, "stream": False, "options": {"num_predict": 16}}
    v1_body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
    async with httpx.AsyncClient(base_url=stack.double_url, limits=limits, timeout=60) as direct, \
            httpx.AsyncClient(base_url=stack.url, limits=limits, timeout=60,
                              headers={"Authorization": f"Bearer {stack.key}"}) as infernet:
        paths = (("double directly (/api/chat)", direct, "/api/chat", direct_body),
                 ("Infernet /v1/chat/completions", infernet, "/v1/chat/completions", v1_body))
        for _, client, path, body in paths:  # warm-up
            await run(client, path, body, 100, 8)
        for concurrency in (1, 32):
            n = requests if concurrency > 1 else max(requests // 2, 100)
            results = {label: await run(client, path, body, n, concurrency) for label, client, path, body in paths}
            base = percentile(results[paths[0][0]][0], 50)
            print(f"concurrency {concurrency}, {n} requests each:")
            for label, (latencies, rate) in results.items():
                p50 = percentile(latencies, 50)
                added = "" if label == paths[0][0] else f"   added p50 {p50 - base:+6.2f} ms"
                print(f"  {label:<34} p50 {p50:7.2f} ms   p99 {percentile(latencies, 99):7.2f} ms"
                      f"   {rate:8,.0f} /s{added}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--nodes", type=int, default=1)
    args = parser.parse_args()
    with bench_stack(nodes=args.nodes, slots=64) as stack:
        asyncio.run(measure(stack, args.requests))


if __name__ == "__main__":
    main()
