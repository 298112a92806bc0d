"""Scale-out: a 3-server NATS cluster, two control-plane replicas on one database, nodes on different servers."""

from __future__ import annotations

import asyncio
from collections import Counter

import psycopg

from tests.doubles.ollama_double import OllamaDouble
from tests.fixtures.waiting import wait_until
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


async def test_chunks_published_while_the_token_stream_elects_a_leader_are_stored_once(nats_cluster, database_url):
    """The token stream's leader dies while the node is streaming: chunks it publishes during the election are
    not stored at first, so the node re-sends them until the new leader acknowledges each (same Nats-Msg-Id:
    stored once). A client replaying the job from the start then gets every chunk exactly once, in order."""
    from tests.sse import collect, tokens

    cluster = nats_cluster(3)
    stack = await Stack(cluster.url, database_url, {"stream_replicas": 3}).start()
    try:
        info = await stack.runtime.bus.js.stream_info("INFERNET_TOKENS")
        leader = cluster.server(info.cluster.leader)
        survivor = next(s for s in cluster.servers if s is not leader)
        async with OllamaDouble(models=["qwen2.5:7b"], token_count=60, delay_ms=40, stall_after=4) as d:
            key = await stack.key("alice")
            await stack.add_node(d.url, nats_url=survivor.url, coalesce_ms=0)
            await stack.wait_nodes_serving("qwen2.5:7b")
            body = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "during the election"}],
                    "stream": True}
            async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
                job_id = r.headers["x-job-id"]  # the client leaves at once: the job runs on (and is streamed)
            node = stack.nodes[-1]
            await wait_until(lambda: (j := node.agent.jobs.get(job_id)) is not None and len(j.parts) >= 4, timeout=30)
            await asyncio.to_thread(leader.kill)
            d.release()  # the rest is generated while the stream has no leader
            final = await stack.wait_job(key, job_id, timeout=120)
            assert final["status"] == "completed", final

            async def new_leader():
                info = await stack.runtime.bus.js.stream_info("INFERNET_TOKENS")
                return info.cluster.leader not in (None, leader.name)
            await wait_until(new_leader, timeout=60, ignore=(Exception,), message="the token stream never re-elected")
            assert node.agent.publisher.chunks_resent > 0  # some chunks were not acknowledged the first time
            # Every chunk is stored exactly once (the node re-sends until acknowledged; resends are de-duplicated).

            async def all_stored():
                chunks, _ = await stack.runtime.relay.stored_chunks(job_id)
                return chunks if node.agent.publisher.unacked_chunks == 0 else None
            chunks = await wait_until(all_stored, timeout=60, message="chunks never all acknowledged")
            assert sorted(c.seq for c in chunks) == list(range(1, len(chunks) + 1)), [c.seq for c in chunks]
            assert "".join(c.text for c in sorted(chunks, key=lambda c: c.seq)) == final["result"]["content"]
            async with stack.client.stream("GET", f"/api/v1/jobs/{job_id}/stream", headers=stack.auth(key)) as r:
                replay = await collect(r)
        seqs = [seq for seq, _ in tokens(replay)]
        assert seqs == list(range(1, len(chunks) + 1)), seqs  # one event per stored chunk: no gap filled in
        assert "".join(t for _, t in tokens(replay)) == final["result"]["content"]
        assert replay[-1].event == "done"
    finally:
        await stack.stop()


async def test_token_replay_survives_the_token_stream_leader_dying(nats_cluster, database_url):
    """With INFERNET_STREAM_REPLICAS=3 the token stream has three copies: a client resuming after its leader
    died still gets every token (with one copy it would wait forever for a replay nobody can serve)."""
    from tests.sse import SSEReader, collect, tokens

    cluster = nats_cluster(3)
    stack = await Stack(cluster.url, database_url, {"stream_replicas": 3}).start()
    try:
        info = await stack.runtime.bus.js.stream_info("INFERNET_TOKENS")
        assert info.config.num_replicas == 3
        leader = cluster.server(info.cluster.leader)
        survivor = next(s for s in cluster.servers if s is not leader)
        async with OllamaDouble(models=["qwen2.5:7b"], token_count=20, delay_ms=2, stall_after=8) as d:
            key = await stack.key("alice")
            await stack.add_node(d.url, nats_url=survivor.url)  # the node's own connection stays up
            await stack.wait_nodes_serving("qwen2.5:7b")
            body = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "resume me"}], "stream": True}
            first: list = []
            async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
                job_id = r.headers["x-job-id"]
                async for event in SSEReader(r).events():
                    first.append(event)
                    if event.event == "token":
                        break
            # Every chunk the node sent before the engine stalled is stored (replicated); then the stream's leader
            # dies (an election follows). Stable over two polls: the node flushes held text a few ms later.
            node = stack.nodes[-1]
            seen: list = []

            async def all_stored():
                job = node.agent.jobs.get(job_id)
                stored = (await stack.runtime.bus.js.stream_info("INFERNET_TOKENS")).state.messages
                now = (job.chunks if job else -1, stored, len(job.parts) if job else -1)
                stable = bool(seen) and seen[-1] == now
                seen.append(now)
                return stable and now[2] >= 8 and now[0] == now[1]
            await wait_until(all_stored, timeout=30, message="the chunks sent before the stall were never all stored")
            await asyncio.to_thread(leader.kill)

            async def new_leader():  # (chunks published during the election: the test above)
                info = await stack.runtime.bus.js.stream_info("INFERNET_TOKENS")
                return info.cluster.leader not in (None, leader.name)
            await wait_until(new_leader, timeout=60, ignore=(Exception,), message="the token stream never re-elected")
            d.release()
            last_id = tokens(first)[-1][0]
            headers = stack.auth(key) | {"Last-Event-ID": str(last_id)}
            async with stack.client.stream("GET", f"/api/v1/jobs/{job_id}/stream", headers=headers) as r:
                rest = await collect(r)
        seqs = [seq for seq, _ in tokens(rest)]
        assert seqs == list(range(last_id + 1, last_id + 1 + len(seqs))), seqs
        assert rest[-1].event == "done"
        content = rest[-1].json()["result"]["content"]
        assert "".join(t for _, t in tokens(first)) + "".join(t for _, t in tokens(rest)) == content
    finally:
        await stack.stop()
