"""Starts a benchmark stack as real processes: embedded NATS + PostgreSQL, a control plane, node agents, Ollama doubles."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from control_plane.embedded import free_port, bus_env, start_nats, start_postgres, wait_for_port
from protocol.identity import node_id_from_token

PY = sys.executable


@dataclass
class BenchStack:
    url: str
    key: str
    double_url: str
    database_url: str
    nats_url: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    node_procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: The stack's temporary directory (NATS and PostgreSQL data, process logs).
    root: Path | None = None


def _cli(env: dict, *args: str) -> str:
    return subprocess.run([PY, "-m", "control_plane.cli", *args], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@contextmanager
def bench_stack(*, nodes: int = 1, slots: int = 64, double_args: tuple[str, ...] = (), cp_env: dict | None = None,
                advertise_interval: float = 1.0):
    """Yield a running BenchStack; everything is stopped and deleted afterwards."""
    root = Path(tempfile.mkdtemp(prefix="infernet-bench-"))
    os.chmod(root, 0o755)
    procs: list[subprocess.Popen] = []
    pg = None
    logs = open(root / "processes.log", "ab")
    try:
        nats_proc, nats_url = start_nats(root)
        procs.append(nats_proc)
        pg, db_url = start_postgres(root)
        env = dict(os.environ, **bus_env(root), INFERNET_DATABASE_URL=db_url, INFERNET_NATS_URL=nats_url, INFERNET_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
                   PYTHONUNBUFFERED="1",
                   # Benchmarks drive one key far past any plan's rate limit: measure throughput, not 429s.
                   INFERNET_RATE_LIMIT_RPM="0", INFERNET_RATE_LIMIT_TPM="0")
        _cli(env, "migrate")
        key = _cli(env, "keys", "create", "--account", "bench")
        dport = free_port()
        double = subprocess.Popen([PY, "-m", "tests.doubles.ollama_double", "--port", str(dport), "--models",
                                   "bench:1b", *double_args], stdout=logs, stderr=logs)
        procs.append(double)
        wait_for_port(dport, proc=double)
        port = free_port()
        cp = subprocess.Popen([PY, "-m", "control_plane.cli", "serve"],
                              env=dict(env, INFERNET_HTTP_PORT=str(port), INFERNET_WARMUP_S="0",
                                       INFERNET_RATE_LIMIT_RPM="100000000", INFERNET_RATE_LIMIT_TPM="100000000000",
                                       **(cp_env or {})),
                              stdout=logs, stderr=logs)
        procs.append(cp)
        wait_for_port(port, proc=cp)
        node_procs = {}
        for i in range(nodes):
            # The registration bounds the slots the control plane counts (16 by default): allow what the node has.
            token = _cli(env, "nodes", "register", f"bench-{i}", "--model", "*", "--max-slots", str(max(slots, 1)))
            proc = subprocess.Popen(
                [PY, "-m", "node_agent.cli", "start"],
                env=dict(env, INFERNET_NODE_TOKEN=token, OLLAMA_HOST=f"http://127.0.0.1:{dport}",
                         INFERNET_MAX_CONCURRENCY=str(slots), INFERNET_ADVERTISE_INTERVAL_S=str(advertise_interval)),
                stdout=logs, stderr=logs)
            procs.append(proc)
            node_procs[node_id_from_token(token)] = proc
        stack = BenchStack(f"http://127.0.0.1:{port}", key, f"http://127.0.0.1:{dport}", db_url, nats_url, procs,
                           node_procs, root)
        asyncio.run(_wait_models(stack))
        yield stack
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        if pg is not None:
            pg.cleanup()
        logs.close()
        shutil.rmtree(root, ignore_errors=True)


async def _wait_models(stack: BenchStack) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=stack.url) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = await client.get("/api/v1/models", headers={"Authorization": f"Bearer {stack.key}"})
            if r.status_code == 200 and r.json()["models"]:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("no node advertised the benchmark model within 60 s")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def wait_all_completed(conn, ids: list[str]):
    """Poll PostgreSQL until every job is completed; returns (first created_at, last completed_at)."""
    while True:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),"
            " min(created_at), max(completed_at) FROM jobs WHERE id = ANY(%s)", (ids,))
        done, failed, first, last = await cur.fetchone()
        if failed:
            raise RuntimeError(f"{failed} jobs failed")
        if done == len(ids):
            return first, last
        await asyncio.sleep(0.05)
