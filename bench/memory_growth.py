"""Where memory grows per job: tracemalloc over a control plane and a node agent running many jobs in one process.

Run:  .venv/bin/python -m bench.memory_growth [--warm 1000] [--jobs 5000] [--concurrency 8]

Embedded NATS and PostgreSQL and the Ollama double run as their own processes; the control plane (with its HTTP
server) and one node agent run here under tracemalloc. After `--warm` jobs a snapshot is taken, then after
`--jobs` more another; the growth between them is attributed to the first Infernet frame (control_plane/,
node_agent/, protocol/) of each allocation's traceback, and printed as bytes per job.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

OURS = ("control_plane/", "node_agent/", "protocol/")


async def run(args: argparse.Namespace) -> None:
    import httpx
    import uvicorn

    from control_plane.accounts.service import create_key, ensure_account
    from control_plane.app import create_app
    from control_plane.embedded import free_port, start_nats, start_postgres, wait_for_port
    from control_plane.nodes.service import register_node
    from control_plane.runtime import Runtime
    from control_plane.settings import Settings
    from node_agent.agent import NodeAgent
    from node_agent.engines.registry import create_engine
    from node_agent.settings import NodeSettings

    root = Path(tempfile.mkdtemp(prefix="infernet-mem-"))
    os.chmod(root, 0o755)
    nats_proc, nats_url = start_nats(root)
    pg, db_url = start_postgres(root)
    dport = free_port()
    double = subprocess.Popen([sys.executable, "-m", "tests.doubles.ollama_double", "--port", str(dport), "--models",
                               "bench:1b"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runtime = server = agent_task = None
    try:
        wait_for_port(dport, proc=double)
        port = free_port()
        settings = Settings(database_url=db_url, nats_url=nats_url, http_port=port, log_level="warning",
                            warmup_s=0, rate_limit_rpm=0, rate_limit_tpm=0)
        runtime = await Runtime.start(settings)
        server = uvicorn.Server(uvicorn.Config(create_app(settings, runtime=runtime), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on", loop="none"))
        server_task = asyncio.create_task(server.serve())
        acct = await ensure_account(runtime.db, "mem")
        key = (await create_key(runtime.db, acct["id"])).key
        node = await register_node(runtime.db, "mem-node")
        agent = NodeAgent(NodeSettings(nats_url=nats_url, node_token=node.token, engine_url=f"http://127.0.0.1:{dport}",
                                       max_concurrency=16, advertise_interval_s=5.0, log_level="warning"),
                          create_engine("ollama", f"http://127.0.0.1:{dport}"), node_id=node.node_id)
        agent_task = asyncio.create_task(agent.run())
        while not any(v.accepting for v in runtime.registry.nodes()):
            await asyncio.sleep(0.05)
        body = {"model": "bench:1b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 32}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            async def jobs(n: int) -> None:
                todo = iter(range(n))

                async def worker():
                    for _ in todo:
                        r = await client.post("/v1/chat/completions", json=body)
                        assert r.status_code == 200, r.text
                await asyncio.gather(*(worker() for _ in range(args.concurrency)))

            await jobs(args.warm)
            await asyncio.sleep(3)
            gc.collect()
            first = tracemalloc.take_snapshot()
            await jobs(args.jobs)
            await asyncio.sleep(3)
            gc.collect()
            second = tracemalloc.take_snapshot()
        report(first, second, args.jobs)
    finally:
        if agent_task is not None:
            agent.stop()
            await asyncio.gather(agent_task, return_exceptions=True)
        if server is not None:
            server.should_exit = True
            await asyncio.gather(server_task, return_exceptions=True)
        if runtime is not None:
            await runtime.stop()
        double.terminate()
        nats_proc.terminate()
        double.wait()
        nats_proc.wait()
        pg.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def report(first: tracemalloc.Snapshot, second: tracemalloc.Snapshot, jobs: int) -> None:
    by_owner: dict[str, int] = {}
    total = 0
    for stat in second.compare_to(first, "traceback"):
        if stat.size_diff == 0:
            continue
        total += stat.size_diff
        owner = next((f"{f.filename.split('/site-packages/')[-1].split('/wt/scale/')[-1]}:{f.lineno}"
                      for f in reversed(stat.traceback) if any(o in f.filename for o in OURS)), None)
        if owner is None:
            top = stat.traceback[-1]
            owner = f"(library) {top.filename.split('/site-packages/')[-1]}:{top.lineno}"
        by_owner[owner] = by_owner.get(owner, 0) + stat.size_diff
    print(f"traced memory growth over {jobs:,} jobs: {total:,} bytes = {total / jobs:.1f} bytes/job")
    for owner, size in sorted(by_owner.items(), key=lambda kv: -abs(kv[1]))[:25]:
        print(f"  {size / jobs:+8.1f} B/job  {size:+10,} B  {owner}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    tracemalloc.start(12)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
