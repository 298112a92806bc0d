"""An offer a node does not answer in time uses no attempt, and a run the silent node started anyway stays invisible.

The silent node here is a real bus client with its own node identity (real nats-server, real PostgreSQL, the
control plane's real dispatcher and recorder): it receives the offer, does not answer within the assignment
timeout, and only once the job was offered elsewhere does it act as if it had run it all along: it streams its
own text for that job on its own subjects, stores a result claiming large usage on JetStream, and replies
"accepted" late. None of that may reach the client, be recorded or be charged.
"""

from __future__ import annotations

import asyncio

import nats

import protocol
from control_plane.nodes.service import register_node
from protocol import subjects
from tests.doubles.ollama_double import OllamaDouble
from tests.fixtures.nats import public
from tests.fixtures.waiting import wait_until
from tests.sse import SSEReader, tokens

MODEL = "qwen2.5:7b"


async def test_a_node_that_runs_an_offer_it_answered_too_late_never_reaches_the_client(stack, nats_url):
    async with OllamaDouble(models=[MODEL], loaded=[], load_on_use=False, token_count=8, stall_after=0) as good:
        key = await stack.key()
        real = await stack.add_node(good.url)
        silent = await register_node(stack.runtime.db, "silent", models=("*",))
        nc = await nats.connect(public(nats_url), token=silent.token,
                                inbox_prefix=subjects.node_inbox_prefix(silent.node_id))
        offers: list[tuple[protocol.Assignment, object]] = []
        cancels: list[protocol.Cancel] = []

        async def on_assign(msg) -> None:  # received, never answered in time
            offers.append((protocol.decode(msg.data, protocol.Assignment), msg))

        async def on_cancel(msg) -> None:
            cancels.append(protocol.decode(msg.data, protocol.Cancel))
        await nc.subscribe(subjects.node_assign(silent.node_id), cb=on_assign)
        await nc.subscribe(subjects.node_cancel(silent.node_id), cb=on_cancel)
        await nc.flush()
        # It looks like the best node (model loaded, fast), so the job's first offer goes to it.
        ad = protocol.Advertisement(
            node_id=silent.node_id, agent_version="0", engine="ollama", state="online",
            slots=8, active_jobs=0, interval_s=0.3, boot_id="s",
            models=(protocol.ModelInfo(MODEL, loaded=True, tokens_per_second=500.0),))

        async def advertise() -> None:
            while True:
                await nc.publish(subjects.node_advertise(silent.node_id), protocol.encode(ad))
                await asyncio.sleep(0.3)
        ticker = asyncio.create_task(advertise())
        try:
            await stack.wait_nodes_serving(MODEL, count=2)
            body = {"model": MODEL, "messages": [{"role": "user", "content": "who answers?"}], "stream": True}
            async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
                assert r.status_code == 200
                job_id = r.headers["x-job-id"]
                reader = SSEReader(r)
                events = []
                # The first offer went to the silent node and timed out; the job was offered to the real node
                # (which holds its text until released) under the same attempt number and a new lease.
                await wait_until(lambda: offers, timeout=30)
                job = await wait_until(lambda: _offered_twice(stack, key, job_id), timeout=30)
                assert job["attempt"] == 1
                stale, msg = offers[0]
                assert stale.job_id == job_id and stale.attempt == 1
                assert await wait_until(lambda: [c for c in cancels if c.lease == stale.lease], timeout=30)
                # Now the silent node acts as if it had run its offer: chunks, a result, a late "accepted".
                leak = [" LEAK"] * 6
                js = nc.jetstream()
                for seq, text in enumerate(leak, 1):
                    chunk = protocol.TokenChunk(job_id, stale.attempt, seq, text, silent.node_id, stale.lease)
                    await nc.publish(subjects.node_job_tokens(silent.node_id, job_id), protocol.encode(chunk))
                await js.publish(subjects.node_job_result(silent.node_id, job_id), protocol.encode(protocol.JobResult(
                    job_id=job_id, attempt=stale.attempt, lease=stale.lease, node_id=silent.node_id,
                    content="".join(leak), usage=protocol.Usage(10, 400, 410), chunks=len(leak))))
                await msg.respond(protocol.encode(protocol.AssignmentReply(
                    job_id=job_id, attempt=stale.attempt, accepted=True, node_id=silent.node_id, admitted=1)))
                await nc.flush()
                # The stale run's chunks and result reach the control plane before the real node says anything.
                await wait_until(lambda: _stored(stack, job_id, len(leak)), timeout=30)
                good.release()
                async for event in reader.events():
                    events.append(event)
        finally:
            ticker.cancel()
            await nc.close()
    text = "".join(t for _, t in tokens(events))
    final = await stack.wait_job(key, job_id)
    assert events[-1].event == "done", events[-1]
    assert "LEAK" not in text and text and text == final["result"]["content"]
    assert [seq for seq, _ in tokens(events)] == list(range(1, len(tokens(events)) + 1))
    assert final["status"] == "completed" and final["node_id"] == real.node_id
    assert final["attempt"] == 1 and final["offers"] >= 2
    # Recorded and charged for the real node's run only: the stale result's 400 completion tokens never were.
    assert final["result"]["usage"]["completion_tokens"] < 400 and final["credits_charged"] is not None


async def _offered_twice(stack, key: str, job_id: str) -> dict | None:
    r = await stack.client.get(f"/api/v1/jobs/{job_id}", headers=stack.auth(key))
    job = r.json()
    return job if (job.get("offers") or 0) >= 2 and job.get("node_id") not in (None, "") else None


async def _stored(stack, job_id: str, count: int) -> bool:
    chunks, _ = await stack.runtime.relay.stored_chunks(job_id)
    return len(chunks) >= count
