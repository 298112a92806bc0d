"""Streaming: time-to-first-token through Infernet vs. straight from the double, and relayed tokens/s.

Run: .venv/bin/python -m bench.streaming_bench [--requests 300] [--streams 64] [--tokens 2000] [--seconds 10]
     [--nodes 2] [--coalesce-ms 0]

Part 1 (concurrency 1): time from sending the request to the first generated token, for the Ollama double
directly (`/api/chat`, NDJSON), Infernet's native SSE (`POST /api/v1/jobs` with "stream": true) and the
OpenAI-compatible stream (`/v1/chat/completions`, first content chunk). Part 2: `--streams` concurrent
native streams of `--tokens`-token answers for `--seconds`; relayed tokens/s counts the tokens clients
received (the engine's completion_tokens of each finished stream) per second, and chunks/s the SSE events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable

import httpx

from bench.stack import bench_stack, percentile

MODEL = "bench:1b"
MESSAGES = [{"role": "user", "content": "Say hello"}]


async def _ttft(client: httpx.AsyncClient, path: str, body: dict, is_token: Callable[[str], bool]) -> float:
    """Milliseconds from sending a streamed request to the first line `is_token` says carries generated text."""
    t0 = time.perf_counter()
    first = None
    async with client.stream("POST", path, json=body) as r:
        async for line in r.aiter_lines():
            if first is None and is_token(line):
                first = time.perf_counter() - t0
    return first * 1000


async def ttft_direct(client: httpx.AsyncClient, max_tokens: int) -> float:
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "options": {"num_predict": max_tokens}}
    return await _ttft(client, "/api/chat", body,
                       lambda line: '"content":"' in line and '"content":""' not in line)


async def ttft_native(client: httpx.AsyncClient, max_tokens: int) -> float:
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": max_tokens}
    return await _ttft(client, "/api/v1/jobs", body, lambda line: line == "event: token")


async def ttft_openai(client: httpx.AsyncClient, max_tokens: int) -> float:
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": max_tokens}
    return await _ttft(client, "/v1/chat/completions", body,
                       lambda line: line.startswith("data: {") and '"delta":{"content"' in line)


async def measure_ttft(stack, requests: int, max_tokens: int) -> None:
    headers = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(base_url=stack.double_url, timeout=60) as direct, \
            httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=60) as infernet:
        paths = (("double directly (/api/chat, stream)", ttft_direct, direct),
                 ("Infernet native SSE (POST /api/v1/jobs)", ttft_native, infernet),
                 ("Infernet /v1/chat/completions stream", ttft_openai, infernet))
        for _, fn, client in paths:  # warm up connections, caches and the model queues
            for _ in range(20):
                await fn(client, max_tokens)
        results = {}
        for _ in range(requests):  # interleaved, so drifts in machine load hit every path alike
            for label, fn, client in paths:
                results.setdefault(label, []).append(await fn(client, max_tokens))
    base = percentile(results[paths[0][0]], 50)
    print(f"time to first token, concurrency 1, {requests} requests each, answers of {max_tokens} tokens:")
    for label, values in results.items():
        p50 = percentile(values, 50)
        added = "" if label == paths[0][0] else f"   added p50 {p50 - base:+6.2f} ms"
        print(f"  {label:<44} p50 {p50:7.2f} ms   p99 {percentile(values, 99):7.2f} ms{added}")


async def measure_relay(stack, streams: int, tokens: int, seconds: float) -> None:
    headers = {"Authorization": f"Bearer {stack.key}"}
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": tokens}
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=streams + 8)
    counts = {"tokens": 0, "chunks": 0, "streams": 0}
    stop_at = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, limits=limits, timeout=120) as client:
        async def one_stream() -> None:
            chunks = 0
            async with client.stream("POST", "/api/v1/jobs", json=body) as r:
                event = None
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "token":
                        chunks += 1
                    elif line.startswith("data: ") and event in ("done", "error"):
                        view = json.loads(line[6:])
                        if event == "error":
                            raise RuntimeError(f"stream failed: {view.get('error')} {view.get('error_message')}")
                        counts["tokens"] += view["result"]["usage"]["completion_tokens"]
            counts["chunks"] += chunks
            counts["streams"] += 1

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                await one_stream()

        await asyncio.gather(*(worker() for _ in range(min(streams, 4))))  # warm-up round
        counts.update(tokens=0, chunks=0, streams=0)
        stop_at = time.perf_counter() + seconds
        cpu_before = cpu_seconds(control_plane_pid(stack))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(control_plane_pid(stack)) - cpu_before
    print(f"relayed through one control plane, {streams} concurrent streams of {tokens}-token answers, "
          f"{elapsed:.1f} s:")
    print(f"  {counts['tokens'] / elapsed:10,.0f} tokens/s   {counts['chunks'] / elapsed:8,.0f} SSE token events/s"
          f"   {counts['streams'] / elapsed:6,.1f} streams/s   ({counts['streams']} streams)")
    print(f"  control plane busy {cpu / elapsed:4.0%} of one core: {counts['tokens'] / cpu:10,.0f} tokens/s and "
          f"{counts['chunks'] / cpu:8,.0f} token events/s per core-second")


def control_plane_pid(stack) -> int:
    return next(p.pid for p in stack.procs if "serve" in p.args and "control_plane.cli" in p.args)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="TTFT samples per path")
    parser.add_argument("--ttft-tokens", type=int, default=16, help="answer length in the TTFT part")
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams in the relay part")
    parser.add_argument("--tokens", type=int, default=2000, help="answer length in the relay part")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the relay part")
    parser.add_argument("--nodes", type=int, default=2, help="node agent processes")
    parser.add_argument("--coalesce-ms", type=float, default=None,
                        help="the nodes' INFERNET_COALESCE_MS (0: one chunk per token, the relay's worst case)")
    args = parser.parse_args()
    if args.coalesce_ms is not None:
        os.environ["INFERNET_COALESCE_MS"] = str(args.coalesce_ms)  # the node agents inherit it
    tokens = str(max(args.tokens, args.ttft_tokens))
    with bench_stack(nodes=args.nodes, slots=64, double_args=("--token-count", tokens)) as stack:
        asyncio.run(measure_ttft(stack, args.requests, args.ttft_tokens))
        asyncio.run(measure_relay(stack, args.streams, args.tokens, args.seconds))


if __name__ == "__main__":
    main()
