"""The OpenAI-compatible engine's failure modes against a double: busy, errors mid-stream, server gone, no usage."""

from __future__ import annotations

import contextlib

import pytest

from node_agent.engines.base import Completion, Delta, EngineBusy, EngineUnavailable, GenerationFailed
from node_agent.engines.openai_compat import OpenAICompatEngine
from protocol import ChatMessage, GenerationParams
from tests.doubles.openai_double import OpenAIDouble

HELLO = (ChatMessage(role="user", content="Say hello"),)


@pytest.fixture
async def double():
    async with OpenAIDouble(models=["qwen2.5-7b-instruct", "bge-m3-embed"], token_count=6) as d:
        yield d


@pytest.fixture
async def engine(double):
    e = OpenAICompatEngine(double.url.removesuffix("/v1"))  # base URL without /v1 works too
    yield e
    await e.aclose()


async def consume(engine, model="qwen2.5-7b-instruct", **params) -> tuple[list[str], Completion | None]:
    deltas, final = [], None
    async with contextlib.aclosing(engine.chat(model, HELLO, GenerationParams(**params))) as stream:
        async for item in stream:
            if isinstance(item, Delta):
                deltas.append(item.text)
            else:
                final = item
    return deltas, final


async def test_models_version_and_request(engine, double):
    health = await engine.health()
    assert health.ok and health.version == "0.9.9-double"
    models = {m.name: m for m in await engine.list_models()}
    assert models["qwen2.5-7b-instruct"].context_length == 8192 and models["qwen2.5-7b-instruct"].loaded
    assert models["bge-m3-embed"].embeddings
    deltas, final = await consume(engine, max_tokens=100, temperature=0.2)
    assert "".join(deltas) == "".join(double.pieces())
    assert (final.prompt_tokens, final.completion_tokens) == (2, 6)
    sent = [r for r in double.requests if r["path"] == "/v1/chat/completions"][-1]["body"]
    assert sent["messages"] == [{"role": "user", "content": "Say hello"}]
    assert sent["stream_options"] == {"include_usage": True} and sent["temperature"] == 0.2


async def test_without_usage_tokens_are_counted(engine, double):
    double.usage = False
    deltas, final = await consume(engine)
    assert final.completion_tokens == len(deltas) == 6
    assert final.prompt_tokens is None  # unknown, not 0


async def test_busy_server_is_engine_busy(engine, double):
    double.status = 503
    with pytest.raises(EngineBusy):
        await consume(engine)


async def test_server_error_is_generation_failed(engine, double):
    double.status = 500
    with pytest.raises(GenerationFailed) as info:
        await consume(engine)
    assert not info.value.produced_tokens


async def test_error_event_mid_stream_says_tokens_were_produced(engine, double):
    double.error_after = 3
    with pytest.raises(GenerationFailed) as info:
        await consume(engine)
    assert info.value.produced_tokens and "crashed" in str(info.value)


async def test_server_down_then_back(engine, double):
    await engine.list_models()
    await double.stop()
    assert not (await engine.health()).ok
    with pytest.raises(EngineUnavailable):
        await consume(engine)
    await double.start()  # same port
    assert (await engine.health()).ok
    _, final = await consume(engine)
    assert final.completion_tokens == 6
