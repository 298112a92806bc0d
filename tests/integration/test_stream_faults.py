"""A replica that loses PostgreSQL or NATS under open streams ends them with an SSE `error` event (the documented
code, what to do, no driver text) rather than cutting the connection or hanging; the jobs run on and are settled once."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.doubles.ollama_double import OllamaDouble
from tests.harness import Stack
from tests.sse import Event, SSEReader, collect, tokens

MODEL = "qwen2.5:7b"


async def test_losing_postgresql_mid_stream_sends_an_error_event(stack):
    async with OllamaDouble(models=[MODEL], token_count=20, stall_after=3) as d:
        key = await stack.key()
        await stack.add_node(d.url)
        await stack.wait_nodes_serving(MODEL)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            assert r.status_code == 200
            await d.wait_active(1)
            await stack.runtime.db.close()  # PostgreSQL gone for this replica
            d.configure(stall_after=None)
            d.release()  # the job ends; recording it and reading its final row need the database
            events = await collect(r)
    last = events[-1]
    assert last.event == "error", [e.event for e in events]
    assert last.json()["error"] == "service_unavailable"
    assert "reconnect with Last-Event-ID" in last.json()["error_message"]
    assert "pool" not in last.data and "PostgreSQL unavailable" not in last.data


@pytest.fixture
async def short_grace(nats_url, database_url):
    """A replica whose streams give a lost NATS connection 1 s to come back."""
    s = await Stack(nats_url, database_url, {"stream_bus_grace_s": 1.0}).start()
    try:
        yield s
    finally:
        await s.stop()


async def _charges(s: Stack, key: str, job_id: str) -> list[dict]:
    r = await s.client.get("/api/v1/credits/transactions", params={"job_id": job_id}, headers=s.auth(key))
    assert r.status_code == 200, r.text
    return [t for t in r.json()["transactions"] if t["kind"] == "charge"]


async def _first_token(reader: SSEReader) -> Event:
    async for event in reader.events():
        if event.event == "token":
            return event
    raise AssertionError("the stream ended before its first token")


async def test_losing_nats_mid_stream_ends_every_stream_with_an_error_event_and_loses_nothing(short_grace, nats_server):
    """nats-server SIGKILLed under a native and a /v1 stream: past the grace each ends with the documented code and
    what to do; once NATS is back both jobs complete on their node, each charged once, and the native stream can be
    resumed with Last-Event-ID to the end."""
    s = short_grace
    async with OllamaDouble(models=[MODEL], token_count=12, stall_after=3) as d:
        key = await s.key()
        await s.add_node(d.url, slots=2)
        await s.wait_nodes_serving(MODEL)
        messages = [{"role": "user", "content": "x"}]
        async with s.client.stream("POST", "/api/v1/jobs", headers=s.auth(key),
                                   json={"model": MODEL, "messages": messages, "stream": True}) as native, \
                s.client.stream("POST", "/v1/chat/completions", headers=s.auth(key),
                                json={"model": MODEL, "messages": messages, "stream": True}) as v1:
            assert (native.status_code, v1.status_code) == (200, 200)
            native_job, v1_job = native.headers["x-job-id"], v1.headers["x-job-id"]
            reader = SSEReader(native)
            seen = await _first_token(reader)  # a token reached the client: the job can only finish where it runs
            v1_lines = v1.aiter_lines()
            async for line in v1_lines:
                if '"content":"' in line and '"content":""' not in line:
                    break
            await d.wait_active(2)
            await asyncio.to_thread(nats_server.kill)
            async with asyncio.timeout(60):  # without a reaction to the lost bus, both streams just keep waiting
                rest = [e async for e in reader.events()]
                v1_rest = [line async for line in v1_lines]
        await asyncio.to_thread(nats_server.start)
        d.configure(stall_after=None)
        d.release()  # both jobs run on to their end on the node
        native_final = await s.wait_job(key, native_job, timeout=60)
        v1_final = await s.wait_job(key, v1_job, timeout=60)

        last = rest[-1]
        assert last.event == "error", [e.event for e in rest]
        assert last.json()["error"] == "service_unavailable"
        assert "lost its connection to NATS" in last.json()["error_message"]
        assert "reconnect with Last-Event-ID" in last.json()["error_message"]
        error_lines = [line for line in v1_rest if line.startswith("data: {\"error\"")]
        assert len(error_lines) == 1 and v1_rest[-1] == "" and "data: [DONE]" not in v1_rest, v1_rest
        v1_error = json.loads(error_lines[0][len("data: "):])["error"]
        assert v1_error["code"] == "service_unavailable"
        assert f"GET /api/v1/jobs/{v1_job}" in v1_error["message"]

        for final in (native_final, v1_final):  # not failed node_lost, not cancelled: completed where it ran
            assert final["status"] == "completed", final
            assert final["attempt"] == 1
            assert final["credits_charged"] > 0
            charges = await _charges(s, key, final["id"])
            assert [c["amount"] for c in charges] == [-final["credits_charged"]]

        got = [(int(e.id), e.json()["text"]) for e in [seen, *rest] if e.event == "token"]
        async with s.client.stream("GET", f"/api/v1/jobs/{native_job}/stream",
                                   headers={**s.auth(key), "Last-Event-ID": str(got[-1][0])}) as again:
            resumed = await collect(again)
        assert resumed[-1].event == "done"
        texts = [t for _, t in got] + [e.json()["text"] for e in resumed if e.event == "token"]
        assert "".join(texts) == native_final["result"]["content"]


async def test_a_nats_restart_within_the_grace_does_not_break_a_stream(stack, nats_server):
    """NATS SIGKILLed and back within the grace (10 s by default), the engine finishing while it is down: the
    stream carries on and ends `done`, its token texts in order and together the whole result. (Chunks the node
    wrote into the dead connection before noticing are lost on core NATS; the stream then brings the rest of the
    recorded text as one later token, so ids may skip but nothing is missing or repeated.)"""
    s = stack
    async with OllamaDouble(models=[MODEL], token_count=12, stall_after=3) as d:
        key = await s.key()
        await s.add_node(d.url)
        await s.wait_nodes_serving(MODEL)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
        async with s.client.stream("POST", "/api/v1/jobs", json=body, headers=s.auth(key)) as r:
            reader = SSEReader(r)
            seen = await _first_token(reader)
            await d.wait_active(1)
            await asyncio.to_thread(nats_server.kill)
            d.configure(stall_after=None)
            d.release()  # the rest is generated while the bus is down
            await asyncio.to_thread(nats_server.start)
            rest = [e async for e in reader.events()]
    assert rest[-1].event == "done", [(e.event, e.data) for e in rest]
    got = tokens([seen, *rest])
    ids = [seq for seq, _ in got]
    assert ids == sorted(set(ids)) and ids[0] == 1, ids
    assert "".join(t for _, t in got) == rest[-1].json()["result"]["content"]
    assert rest[-1].json()["credits_charged"] > 0
