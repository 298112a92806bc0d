"""Scale-out: a 3-server NATS cluster, two control-plane replicas on one database, nodes on different servers."""

from __future__ import annotations

import asyncio
from collections import Counter

import psycopg

from tests.doubles.ollama_double import OllamaDouble
from tests.harness import Stack


async def test_two_replicas_on_a_three_server_nats_cluster_place_and_record_each_job_once(nats_cluster, database_url):
    cluster = nats_cluster(3)
    replicas = [await Stack(cluster.url, database_url, {"stream_replicas": 3}).start() for _ in range(2)]
    try:
        async with OllamaDouble(models=["qwen2.5:7b"], delay_ms=2) as d:
            key = await replicas[0].key("alice")
            for i, server in enumerate((cluster[0], cluster[2])):  # agents dial different servers
                await replicas[0].add_node(d.url, name=f"n{i}", slots=4, nats_url=server.url)
            for r in replicas:
                await r.wait_nodes_serving("qwen2.5:7b", count=2)

            async def one(i: int) -> str:
                stack = replicas[i % 2]
                r = await stack.submit(key, model="qwen2.5:7b")
                assert r.status_code == 200, r.text
                return r.json()["id"]
            ids = await asyncio.gather(*(one(i) for i in range(60)))
            jobs = await asyncio.gather(*(replicas[i % 2].wait_job(key, j, timeout=60) for i, j in enumerate(ids)))
        assert Counter(j["status"] for j in jobs) == {"completed": 60}
        # Each job was offered, run and recorded once: one chat request per job reached the engine.
        assert len(d.requests_to("/api/chat")) == 60
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT status, attempt, count(*) FROM jobs GROUP BY 1, 2").fetchall()
        assert rows == [("completed", 1, 60)]
        info = await replicas[0].runtime.bus.js.stream_info("INFERNET_RESULTS")
        assert info.config.num_replicas == 3
    finally:
        for r in replicas:
            await r.stop()
