"""Native SSE on /api/v1 over real NATS and PostgreSQL: order, completeness, late join, resume, replay, errors."""

from __future__ import annotations

import msgspec
import psycopg
import pytest

import protocol
from protocol import subjects
from tests.doubles.ollama_double import OllamaDouble
from tests.fixtures.waiting import wait_until
from tests.harness import Stack
from tests.sse import SSEReader, collect, read_until, tokens

MODEL = "qwen2.5:7b"


def _text(events) -> str:
    return "".join(text for _, text in tokens(events))


def _assert_in_order(events, first: int = 1) -> None:
    ids = [seq for seq, _ in tokens(events)]
    assert ids == list(range(first, first + len(ids))), ids



async def test_stream_true_answers_with_tokens_in_order_then_the_result(stack):
    # The node sends the first token at once and coalesces later ones; a 10 s window makes that independent of
    # how fast this (shared) machine produces the 60 tokens.
    async with OllamaDouble(models=[MODEL], token_count=60, delay_ms=1) as d:
        key = await stack.ready(d, MODEL, coalesce_ms=10_000)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "stream please"}], "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            job_id = r.headers["x-job-id"]
            events = await collect(r)
    assert events[0].event == "job" and events[0].json()["id"] == job_id
    assert events[0].json()["status"] == "pending"
    _assert_in_order(events)
    assert 1 < len(tokens(events)) < 60  # coalesced, but not into one chunk
    done = events[-1]
    assert done.event == "done" and [e.event for e in events].count("done") == 1
    view = done.json()
    assert view["status"] == "completed" and view["id"] == job_id and view["node_id"]
    assert view["result"]["content"] == _text(events)
    assert view["result"]["usage"]["completion_tokens"] == 60
    assert view["result"]["ttft_ms"] is not None and view["result"]["duration_ms"] is not None
    assert view["time_to_first_token_ms"] >= 0
    job = await stack.wait_job(key, job_id)
    assert job["status"] == "completed" and job["time_to_first_token_ms"] == view["time_to_first_token_ms"]


async def test_a_job_not_streamed_records_no_first_token(stack, double):
    key = await stack.ready(double, MODEL)
    r = await stack.submit(key, model=MODEL)
    job = await stack.wait_job(key, r.json()["id"])
    assert job["status"] == "completed" and "time_to_first_token_ms" not in job


async def _published(stack: Stack, job_id: str) -> None:
    """Wait until the node has published the job's first chunk (the one it sends at once)."""
    async def stored():
        return (await stack.runtime.relay.stored_chunks(job_id))[0]
    await wait_until(stored, timeout=30, message=f"no chunk of {job_id} was ever stored")


async def test_late_join_gets_every_token_then_the_live_ones(stack):
    async with OllamaDouble(models=[MODEL], token_count=30, delay_ms=2, stall_after=10) as d:
        key = await stack.ready(d, MODEL)
        job_id = (await stack.submit(key, model=MODEL)).json()["id"]
        await _published(stack, job_id)
        async with stack.client.stream("GET", f"/api/v1/jobs/{job_id}/stream", headers=stack.auth(key)) as r:
            assert r.status_code == 200
            reader = SSEReader(r)
            events = []
            async for event in reader.events():
                events.append(event)
                if event.event == "token":
                    assert event.id == "1"  # published before this client came: replayed
                    d.release()  # the rest comes live
                    break
            events += [e async for e in reader.events()]
    _assert_in_order(events)
    assert events[-1].event == "done"
    assert _text(events) == events[-1].json()["result"]["content"]
    assert len(_text(events).split()) == 30


async def test_last_event_id_resumes_mid_stream_and_leaving_does_not_cancel(stack):
    async with OllamaDouble(models=[MODEL], token_count=20, delay_ms=2, stall_after=8) as d:
        key = await stack.ready(d, MODEL)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "resume me"}], "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            job_id = r.headers["x-job-id"]
            first = await read_until(SSEReader(r), "token")  # then the client goes away mid-stream
        last_id = tokens(first)[-1][0]
        # The job keeps running: nobody cancelled it.
        row = await stack.runtime.db.fetchone("get_job_any", {"id": job_id})
        assert row["status"] == "processing"
        d.release()
        headers = stack.auth(key) | {"Last-Event-ID": str(last_id)}
        async with stack.client.stream("GET", f"/api/v1/jobs/{job_id}/stream", headers=headers) as r:
            rest = await collect(r)
    assert d.cancelled_streams == 0
    _assert_in_order(rest, first=last_id + 1)
    assert rest[-1].event == "done"
    assert _text(first) + _text(rest) == rest[-1].json()["result"]["content"]


async def test_a_finished_job_is_replayed_whole(stack):
    async with OllamaDouble(models=[MODEL], token_count=40, delay_ms=1) as d:
        key = await stack.ready(d, MODEL)
        job_id = (await stack.submit(key, model=MODEL)).json()["id"]
        job = await stack.wait_job(key, job_id)
    async with stack.client.stream("GET", f"/api/v1/jobs/{job_id}/stream", headers=stack.auth(key)) as r:
        events = await collect(r)
    assert events[0].event == "job" and events[0].json()["status"] == "completed"
    _assert_in_order(events)
    assert _text(events) == job["result"]["content"]
    assert events[-1].event == "done" and events[-1].json()["result"]["content"] == job["result"]["content"]
    # Resuming a finished job from its last token yields only the final event.
    last = tokens(events)[-1][0]
    headers = stack.auth(key) | {"Last-Event-ID": str(last)}
    async with stack.client.stream("GET", f"/api/v1/jobs/{job_id}/stream", headers=headers) as r:
        again = await collect(r)
    assert [e.event for e in again] == ["job", "done"]
    # Replaying a finished job is not its first token reaching a client.
    assert "time_to_first_token_ms" not in await stack.wait_job(key, job_id)


async def test_engine_error_mid_stream_ends_with_an_error_event(stack):
    async with OllamaDouble(models=[MODEL], error_after=4, delay_ms=1,
                            error_message="CUDA error: out of memory") as d:
        key = await stack.ready(d, MODEL)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            job_id = r.headers["x-job-id"]
            events = await collect(r)
    assert len(_text(events).split()) == 4
    _assert_in_order(events)
    end = events[-1]
    assert end.event == "error"
    assert end.json()["status"] == "failed" and end.json()["error"] == "engine_error"
    assert "out of memory" in end.json()["error_message"]
    assert (await stack.wait_job(key, job_id))["status"] == "failed"


async def test_heartbeats_keep_a_quiet_stream_alive(nats_url, database_url):
    stack = await Stack(nats_url, database_url, overrides={"stream_heartbeat_s": 0.1}).start()
    try:
        async with OllamaDouble(models=[MODEL], stall_after=1) as d:
            key = await stack.ready(d, MODEL)
            body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
            async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
                reader = SSEReader(r)
                await read_until(reader, "token")
                async for _ in reader.events(comments=True):
                    if len(reader.comments) >= 2:
                        break
                assert reader.comments[:2] == ["keep-alive", "keep-alive"]
                d.release()
    finally:
        await stack.stop()


async def test_chunks_of_another_attempt_never_reach_the_client(stack):
    async with OllamaDouble(models=[MODEL], token_count=12, delay_ms=2, stall_after=3) as d:
        key = await stack.ready(d, MODEL)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "attempts"}], "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            job_id = r.headers["x-job-id"]
            reader = SSEReader(r)
            events = await read_until(reader, "token")
            # A stray chunk of another attempt (a node that was presumed lost) and a duplicate of this one.
            nc = stack.runtime.bus.nc
            node_id = stack.nodes[-1].node_id  # as if the job's own node sent them
            for attempt, seq, text in ((2, 2, " INTRUDER"), (0, 5, " STALE"), (1, 1, " DUPLICATE")):
                chunk = protocol.TokenChunk(job_id=job_id, attempt=attempt, seq=seq, text=text, node_id=node_id)
                await nc.publish(subjects.node_job_tokens(node_id, job_id), protocol.encode(chunk))
            await nc.flush()
            d.release()
            async for event in reader.events():
                events.append(event)
    _assert_in_order(events)
    text = _text(events)
    assert "INTRUDER" not in text and "STALE" not in text and "DUPLICATE" not in text
    assert text == events[-1].json()["result"]["content"]


async def test_a_job_retried_before_any_token_streams_only_the_new_attempt(stack):
    async with OllamaDouble(models=[MODEL], token_count=10) as good, \
            OllamaDouble(models=[MODEL], stall_after=0) as stuck:
        key = await stack.key("alice")
        bad = await stack.add_node(stuck.url, name="stuck")
        await stack.wait_nodes_serving(MODEL)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "retry"}], "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            reader = SSEReader(r)
            events = [await anext(reader.events())]
            await stuck.wait_active(1)
            # The node shuts down before producing a token: the job is placed again, on the other node.
            await stack.add_node(good.url, name="good")
            await stack.wait_nodes_serving(MODEL, count=2)
            await stack.stop_node(bad)
            async for event in reader.events():
                events.append(event)
    _assert_in_order(events)
    done = events[-1].json()
    assert events[-1].event == "done" and done["attempt"] == 2
    assert _text(events) == done["result"]["content"]
    assert done["time_to_first_token_ms"] >= 0


async def test_any_replica_serves_any_job_stream(stack, nats_url, database_url):
    other = await Stack(nats_url, database_url).start()
    try:
        async with OllamaDouble(models=[MODEL], token_count=25, delay_ms=2, stall_after=5) as d:
            key = await stack.ready(d, MODEL)
            job_id = (await stack.submit(key, model=MODEL)).json()["id"]
            await d.wait_active(1)
            async with other.client.stream("GET", f"/api/v1/jobs/{job_id}/stream", headers=other.auth(key)) as r:
                assert r.status_code == 200
                reader = SSEReader(r)
                events = []
                async for event in reader.events():
                    events.append(event)
                    if event.event == "token" and event.id == "1":
                        d.release()
        _assert_in_order(events)
        assert events[-1].event == "done"
        assert _text(events) == events[-1].json()["result"]["content"]
        assert len(_text(events).split()) == 25
    finally:
        await other.stop()


async def test_stream_errors_before_streaming_are_plain_errors(stack, double):
    key = await stack.ready(double, MODEL)
    other = await stack.key("bob")
    body = {"model": "nope:1b", "messages": [{"role": "user", "content": "x"}], "stream": True}
    r = await stack.client.post("/api/v1/jobs", headers=stack.auth(key), json=body)
    assert (r.status_code, r.json()["error"]) == (404, "model_not_found")
    job_id = (await stack.submit(key, model=MODEL)).json()["id"]
    r = await stack.client.get(f"/api/v1/jobs/{job_id}/stream", headers=stack.auth(other))
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await stack.client.get(f"/api/v1/jobs/{job_id}/stream", headers=stack.auth(key) | {"Last-Event-ID": "abc"})
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")
    r = await stack.client.get(f"/api/v1/jobs/{job_id}/stream")
    assert r.status_code == 401
    assert stack.runtime.relay.open_watches == 0


async def test_too_many_open_streams_for_an_account_is_429(nats_url, database_url):
    stack = await Stack(nats_url, database_url, overrides={"max_open_streams_per_account": 1}).start()
    try:
        async with OllamaDouble(models=[MODEL], stall_after=1) as d:
            key = await stack.ready(d, MODEL)
            body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
            async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
                reader = SSEReader(r)
                await anext(reader.events())
                second = await stack.client.post("/api/v1/jobs", json=body, headers=stack.auth(key))
                assert second.status_code == 429 and second.json()["error"] == "rate_limited"
                assert second.headers["retry-after"] == "1"
                d.configure(stall_after=None)
                d.release()
                assert [e async for e in reader.events()][-1].event == "done"
            # The slot is free again once the first stream ended.
            await wait_until(lambda: stack.runtime.relay.open_watches == 0, timeout=10)
            async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
                assert r.status_code == 200
                assert (await collect(r))[-1].event == "done"
    finally:
        await stack.stop()


@pytest.mark.parametrize("size", [1, 500])
async def test_replay_pages_through_long_streams(stack, size):
    """Chunks stored in JetStream come back in order, also past one direct-get batch."""
    job_id, node_id = "job_" + "ab" * 8, "node_ab"
    nc = stack.runtime.bus.nc
    for seq in range(1, size * 3 + 1):
        await nc.publish(subjects.node_job_tokens(node_id, job_id), msgspec.json.encode(
            protocol.TokenChunk(job_id=job_id, attempt=1, seq=seq, text=f"t{seq}", node_id=node_id)))
    await nc.flush()

    async def stored():
        chunks, _ = await stack.runtime.relay.stored_chunks(job_id)
        return chunks if len(chunks) == size * 3 else None
    chunks = await wait_until(stored, timeout=10)
    assert [c.seq for c in chunks] == list(range(1, size * 3 + 1))
    # Going on from where a replay ended reads only what was stored since.
    _, upto = await stack.runtime.relay.stored_chunks(job_id)
    later = protocol.TokenChunk(job_id=job_id, attempt=1, seq=size * 3 + 1, text="late", node_id=node_id)
    await nc.publish(subjects.node_job_tokens(node_id, job_id), protocol.encode(later))
    await nc.flush()
    assert await wait_until(lambda: _after(stack, job_id, upto), timeout=10) == [later]


async def _after(stack, job_id, upto):
    chunks, _ = await stack.runtime.relay.stored_chunks(job_id, start=upto)
    return chunks


async def test_held_tokens_reach_the_client_while_the_engine_pauses(stack):
    """Tokens coalesced behind the first are flushed on a timer, not only when the next token arrives."""
    async with OllamaDouble(models=[MODEL], stall_after=4) as d:  # 4 tokens in one burst, then silence
        key = await stack.ready(d, MODEL)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "burst then pause"}], "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            reader = SSEReader(r)
            text = ""
            async for event in reader.events():
                if event.event == "token":
                    text += event.json()["text"]
                if text.count(" ") >= 3:  # all four burst tokens arrived while the engine is still stalled
                    break
            assert d.active_streams == 1
            d.release()


async def test_the_first_token_reaches_the_client_before_its_write_and_a_lost_race_fails_the_job(stack, database_url):
    """This replica placed the attempt, so its first token goes out while mark_first_token is still blocked (a
    transaction holds the job's row). That transaction then sends the job back for another attempt, as the sweeper
    does when a node is declared lost: the write finds the attempt gone, and the job is failed (node_lost) instead
    of run again, so the client, who saw the first attempt's token, never sees a second attempt's."""
    async with OllamaDouble(models=[MODEL], token_count=6, stall_after=0) as d:
        key = await stack.ready(d, MODEL)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "stream please"}], "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            reader = SSEReader(r)
            events = await read_until(reader, "job")
            job_id = events[-1].json()["id"]
            await wait_until(lambda: d.active_streams >= 1, timeout=30, message="the engine never started the job")
            async with await psycopg.AsyncConnection.connect(database_url) as holder:
                await holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))  # the write waits
                d.release()
                async for event in reader.events():
                    events.append(event)
                    if event.event == "token":
                        break
                assert tokens(events)[0][0] == 1  # shown while its write is held
                async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as peek:
                    marked = await (await peek.execute("SELECT first_token_at FROM jobs WHERE id = %s",
                                                       (job_id,))).fetchone()
                assert marked == (None,)
                await holder.execute("UPDATE jobs SET status = 'pending', node_id = NULL, lease = NULL "
                                     "WHERE id = %s", (job_id,))
                await holder.commit()
            events += [e async for e in reader.events()]
    assert events[-1].event == "error" and events[-1].json()["error"] == "node_lost", events[-1].data
    job = await stack.wait_job(key, job_id)
    assert job["status"] == "failed" and job["error"] == "node_lost"
    assert job.get("credits_charged", 0) == 0
