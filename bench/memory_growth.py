"""Where memory grows per job: a control plane and a node agent running many jobs in one process, measured.

Run:  .venv/bin/python -m bench.memory_growth [--warm 1000] [--jobs 3000] [--concurrency 4] [--no-trace]

Embedded NATS and PostgreSQL and the Ollama double run as their own processes; the control plane (with its HTTP
server) and one node agent run here. After `--warm` jobs: RSS, the interpreter's allocated blocks and a count
of live objects per type; then tracemalloc (one frame) traces the next `--jobs` jobs. At the end the same
figures again: what grew, per job, and the allocation sites of the traced memory still alive, grouped by file
and line.
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

async def run(args: argparse.Namespace) -> None:
    import httpx
    import uvicorn

    from bench.load import closed_loop
    from control_plane.accounts.service import create_key, ensure_account
    from control_plane.app import create_app
    from control_plane.embedded import bus_env, free_port, start_nats, start_postgres, wait_for_port
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
        # the control plane's identities on the secured dev bus, as `dev` gives them
        settings = Settings.from_env(bus_env(root), database_url=db_url, nats_url=nats_url, http_port=port,
                                     log_level="warning", log_format="json", warmup_s=0, rate_limit_rpm=0,
                                     rate_limit_tpm=0)
        runtime = await Runtime.start(settings)
        server = uvicorn.Server(uvicorn.Config(create_app(settings, runtime=runtime), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on", loop="none"))
        server_task = asyncio.create_task(server.serve())
        acct = await ensure_account(runtime.db, "mem")
        key = (await create_key(runtime.db, acct["id"])).key
        node = await register_node(runtime.db, "mem-node", models=("*",))
        agent = NodeAgent(NodeSettings(nats_url=nats_url, node_token=node.token, engine_url=f"http://127.0.0.1:{dport}",
                                       max_concurrency=16, advertise_interval_s=5.0, log_level="warning"),
                          create_engine("ollama", f"http://127.0.0.1:{dport}"), node_id=node.node_id)
        agent_task = asyncio.create_task(agent.run())
        while not any(v.accepting for v in runtime.registry.nodes()):
            await asyncio.sleep(0.05)
        body = {"model": "bench:1b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 32}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            async def one() -> None:
                r = await client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text

            async def jobs(n: int) -> None:
                await closed_loop(one, n, args.concurrency)

            await jobs(args.warm)
            await asyncio.sleep(3)
            before = figures()
            if args.trace:
                tracemalloc.start(1)
            rss = []
            for _ in range(args.checkpoints):  # RSS along the way: growth that levels off is bounded
                await jobs(args.jobs // args.checkpoints)
                rss.append(figures()["rss"])
            await asyncio.sleep(3)
            after = figures()
            traced = tracemalloc.take_snapshot() if args.trace else None
            tracemalloc.stop()
            print("RSS after each checkpoint (MB):", " ".join(f"{r / 1e6:.2f}" for r in rss))
        report(before, after, traced, args.jobs)
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


def figures() -> dict:
    import collections
    import sys

    import psutil

    gc.collect()
    return {"rss": psutil.Process().memory_info().rss, "blocks": sys.getallocatedblocks(),
            "types": collections.Counter(type(o).__name__ for o in gc.get_objects())}


def report(before: dict, after: dict, traced: tracemalloc.Snapshot | None, jobs: int) -> None:
    print(f"over {jobs:,} jobs after warm-up: RSS {after['rss'] - before['rss']:+,} B "
          f"({(after['rss'] - before['rss']) / jobs:+.1f} B/job); allocated blocks "
          f"{after['blocks'] - before['blocks']:+,} ({(after['blocks'] - before['blocks']) / jobs:+.2f}/job)")
    grown = {t: after["types"][t] - before["types"].get(t, 0) for t in after["types"]}
    print("live objects per type that grew by more than 10:")
    for name, n in sorted(grown.items(), key=lambda kv: -kv[1])[:15]:
        if n > 10:
            print(f"  {n:+8,}  {name}")
    if traced is None:
        return
    sites: dict[str, int] = {}
    for stat in traced.statistics("lineno"):
        frame = stat.traceback[0]
        where = f"{frame.filename.split('/site-packages/')[-1].split('/wt/scale/')[-1]}:{frame.lineno}"
        sites[where] = sites.get(where, 0) + stat.size
    total = sum(sites.values())
    print(f"traced memory allocated during the jobs and still alive: {total:,} B ({total / jobs:.1f} B/job); "
          f"largest sites:")
    for where, size in sorted(sites.items(), key=lambda kv: -kv[1])[:20]:
        print(f"  {size / jobs:8.1f} B/job  {size:10,} B  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--checkpoints", type=int, default=6)
    parser.add_argument("--trace", action=argparse.BooleanOptionalAction, default=True,
                        help="tracemalloc the measured jobs (its own tables then count in RSS: use --no-trace for RSS)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
