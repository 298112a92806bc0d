"""The OpenAI-compatible /v1 API driven by the official `openai` SDK, over real NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from tests.doubles.ollama_double import OllamaDouble, default_tokens, embedding
from tests.fixtures.waiting import wait_until
from tests.harness import Stack

MODEL = "qwen2.5:7b"
EMBED = "nomic-embed-text:latest"


def client(stack: Stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)



async def test_chat_completion_is_a_job_and_passes_every_parameter(stack):
    async with OllamaDouble(models=[MODEL]) as d:
        key = await stack.ready(d, MODEL)
        async with client(stack, key) as oa:
            c = await oa.chat.completions.create(
                model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "What is the capital of France?"}],
                temperature=0.3, top_p=0.9, max_tokens=64, stop=["\n\n"], seed=7, user="end-user-1")
        sent = d.requests_to("/api/chat")[-1].body
    assert c.object == "chat.completion" and c.model == MODEL and c.id.startswith("job_")
    assert len(c.choices) == 1 and c.choices[0].index == 0
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == "".join(default_tokens("Be brief.\nWhat is the capital of France?", 16))
    assert c.choices[0].finish_reason == "stop"
    assert (c.usage.completion_tokens, c.usage.total_tokens) == (16, c.usage.prompt_tokens + 16)
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["options"] == {"num_predict": 64, "temperature": 0.3, "top_p": 0.9, "stop": ["\n\n"], "seed": 7}
    # It is an ordinary job: listed, completed, with the same content.
    jobs = (await stack.client.get("/api/v1/jobs", headers=stack.auth(key))).json()["jobs"]
    assert [j["id"] for j in jobs] == [c.id]
    assert jobs[0]["status"] == "completed" and jobs[0]["result"]["content"] == c.choices[0].message.content
    assert "time_to_first_token_ms" not in jobs[0]  # nothing was streamed to a client


async def test_finish_reason_length_and_max_completion_tokens(stack):
    async with OllamaDouble(models=[MODEL], token_count=16) as d:
        key = await stack.ready(d, MODEL)
        async with client(stack, key) as oa:
            short = await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                     max_completion_tokens=5)
            full = await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5
    assert full.choices[0].finish_reason == "stop" and full.usage.completion_tokens == 16
    assert d.requests_to("/api/chat")[-1].body["options"]["num_predict"] == 512  # the default


async def test_streamed_completion_chunks_usage_and_done(stack):
    async with OllamaDouble(models=[MODEL], token_count=40, delay_ms=1) as d:
        key = await stack.ready(d, MODEL)
        async with client(stack, key) as oa:
            stream = await oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "count"}], stream=True,
                stream_options={"include_usage": True})
            chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "".join(default_tokens("count", 40))
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 1
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40
    assert all(ch.usage is None for ch in chunks[:-1])
    job = await stack.wait_job(key, chunks[0].id)
    assert job["status"] == "completed" and job["result"]["content"] == text
    assert job["time_to_first_token_ms"] >= 0


async def test_streamed_without_usage_has_no_usage_chunk(stack, double):
    key = await stack.ready(double, MODEL)
    async with client(stack, key) as oa:
        stream = await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                  stream=True, max_tokens=3)
        chunks = [chunk async for chunk in stream]
    assert all(ch.choices for ch in chunks) and all(ch.usage is None for ch in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_content_parts_roles_and_structured_output(stack):
    async with OllamaDouble(models=[MODEL]) as d:
        key = await stack.ready(d, MODEL)
        schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        async with client(stack, key) as oa:
            c = await oa.chat.completions.create(
                model=MODEL,
                messages=[{"role": "developer", "content": "Answer in JSON."},
                          {"role": "user", "content": [{"type": "text", "text": "first"},
                                                       {"type": "text", "text": "second"}]}],
                response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
            sent_schema = d.requests_to("/api/chat")[-1].body
            await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "json"}],
                                             response_format={"type": "json_object"})
            sent_json = d.requests_to("/api/chat")[-1].body
    assert sent_schema["messages"] == [{"role": "system", "content": "Answer in JSON."},
                                       {"role": "user", "content": "first\nsecond"}]
    assert sent_schema["format"] == schema and sent_json["format"] == "json"
    assert isinstance(json.loads(c.choices[0].message.content)["text"], str)


async def test_error_classes_of_the_sdk(stack, nats_url, database_url):
    async with OllamaDouble(models=[MODEL]) as d:
        key = await stack.ready(d, MODEL)
        async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="inf_wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as err:
                await bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
            assert err.value.status_code == 401 and err.value.code == "unauthorized"
            with pytest.raises(openai.AuthenticationError):
                await bad.models.list()
        async with client(stack, key) as oa:
            msg = [{"role": "user", "content": "x"}]
            with pytest.raises(openai.NotFoundError) as err:
                await oa.chat.completions.create(model="gpt-9000", messages=msg)
            assert err.value.code == "model_not_found" and "gpt-9000" in err.value.message
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=MODEL, messages=msg, n=9)
            assert err.value.param == "n" and err.value.body["type"] == "invalid_request_error"
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=MODEL, messages=msg, temperature=3)
            assert err.value.param == "temperature"
            image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=MODEL, messages=image)
            assert "image_url" in err.value.message
            with pytest.raises(openai.BadRequestError):
                await oa.chat.completions.create(model=MODEL, messages=[])
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=MODEL, messages=msg, stream_options={"include_usage": True})
            # No capacity: the only node serving the model is draining.
            node = stack.nodes[0]
            node.agent.state = "draining"
            await node.agent.advertise()
            await wait_until(lambda: not stack.runtime.registry.accepting(MODEL), timeout=10)
            with pytest.raises(openai.APIStatusError) as err:
                await oa.chat.completions.create(model=MODEL, messages=msg)
            assert err.value.status_code == 503 and err.value.code == "no_capacity"
            with pytest.raises(openai.APIStatusError) as err:
                await oa.chat.completions.create(model=MODEL, messages=msg, stream=True)
            assert err.value.status_code == 503


async def test_rate_limit_error_past_the_open_stream_limit(nats_url, database_url):
    stack = await Stack(nats_url, database_url, overrides={"max_open_streams_per_account": 1}).start()
    try:
        async with OllamaDouble(models=[MODEL], stall_after=1) as d:
            key = await stack.ready(d, MODEL)
            async with client(stack, key) as oa:
                msg = [{"role": "user", "content": "x"}]
                stream = await oa.chat.completions.create(model=MODEL, messages=msg, stream=True)
                await anext(aiter(stream))
                with pytest.raises(openai.RateLimitError) as err:
                    await oa.chat.completions.create(model=MODEL, messages=msg)
                assert err.value.code == "rate_limited" and err.value.response.headers["retry-after"] == "1"
                d.configure(stall_after=None)
                d.release()
                async for _ in stream:
                    pass
    finally:
        await stack.stop()


async def test_closing_a_streamed_completion_cancels_the_job_on_the_node(stack):
    async with OllamaDouble(models=[MODEL], token_count=500, delay_ms=20) as d:
        key = await stack.ready(d, MODEL)
        async with client(stack, key) as oa:
            stream = await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "long"}],
                                                      stream=True)
            seen = 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    seen += 1
                    if seen == 2:
                        break
            await stream.close()
            job_id = chunk.id
        await d.wait_cancelled(1)  # the engine saw its request closed: generation stopped
        job = await stack.wait_job(key, job_id)
    assert job["status"] == "cancelled"
    assert d.completed_streams == 0


async def test_leaving_a_native_stream_does_not_cancel_but_leaving_v1_does(stack):
    async with OllamaDouble(models=[MODEL], token_count=200, delay_ms=10) as d:
        key = await stack.ready(d, MODEL, slots=2)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            job_id = r.headers["x-job-id"]
            async for line in r.aiter_lines():
                if line.startswith("event: token"):
                    break
        job = await stack.wait_job(key, job_id)
        assert job["status"] == "completed" and d.cancelled_streams == 0
        # The /v1 half: leaving an OpenAI-style stream cancels its job (an SDK client that stops reading is done).
        async with stack.client.stream("POST", "/v1/chat/completions", json=body, headers=stack.auth(key)) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {") and '"content":"' in line.replace(" ", "") \
                        and '"content":""' not in line.replace(" ", ""):
                    job_id = json.loads(line[6:])["id"]
                    break
        await d.wait_cancelled(1)
        job = await stack.wait_job(key, job_id)
        assert job["status"] == "cancelled" and d.completed_streams == 1


async def test_engine_error_mid_stream_raises_in_the_sdk(stack):
    async with OllamaDouble(models=[MODEL], error_after=3, delay_ms=8, error_message="CUDA error: out of memory") as d:
        key = await stack.ready(d, MODEL)
        async with client(stack, key) as oa:
            stream = await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                      stream=True)
            texts = []
            with pytest.raises(openai.APIError) as err:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        texts.append(chunk.choices[0].delta.content)
            assert "out of memory" in err.value.message and err.value.code == "engine_error"
            assert len("".join(texts).split()) == 3
            with pytest.raises(openai.APIStatusError) as err:
                await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
            assert err.value.status_code == 502 and err.value.code == "engine_error"


async def test_embeddings_float_and_base64(stack):
    async with OllamaDouble(models=[MODEL, EMBED], embed_dim=8) as d:
        key = await stack.ready(d, EMBED)
        async with client(stack, key) as oa:
            one = await oa.embeddings.create(model=EMBED, input="hello world")  # the SDK asks for base64
            many = await oa.embeddings.create(model=EMBED, input=["a", "b c"], encoding_format="float")
            with pytest.raises(openai.BadRequestError) as err:
                await oa.embeddings.create(model=EMBED, input=[[1, -2, 3]])  # not cl100k_base ids
            assert err.value.param == "input"
            with pytest.raises(openai.NotFoundError):
                await oa.embeddings.create(model="no-embedder", input="x")
    assert one.object == "list" and one.model == EMBED and len(one.data) == 1
    assert one.data[0].embedding == pytest.approx(embedding("hello world", 8), rel=1e-6)
    assert [e.index for e in many.data] == [0, 1]
    assert many.data[1].embedding == embedding("b c", 8)
    assert many.usage.prompt_tokens == 3 and many.usage.total_tokens == 3
    assert d.requests_to("/api/embed")[-1].body["input"] == ["a", "b c"]
    jobs = (await stack.client.get("/api/v1/jobs", headers=stack.auth(key))).json()["jobs"]
    assert len(jobs) == 2 and all(j["status"] == "completed" for j in jobs)


async def test_models_list_and_retrieve(stack):
    async with OllamaDouble(models=[MODEL, "llama3.2:3b"]) as d:
        key = await stack.ready(d, MODEL)
        await stack.wait_nodes_serving("llama3.2:3b")
        async with client(stack, key) as oa:
            models = [m async for m in oa.models.list()]
            one = await oa.models.retrieve("llama3.2:3b")
            with pytest.raises(openai.NotFoundError):
                await oa.models.retrieve("gpt-9000")
    assert sorted(m.id for m in models) == ["llama3.2:3b", MODEL]
    assert all(m.object == "model" and m.owned_by == "infernet" for m in models)
    assert one.id == "llama3.2:3b"


async def test_the_sync_client_works_too(stack, double):
    key = await stack.ready(double, MODEL)

    def use_sync() -> tuple[str, str]:
        with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0) as oa:
            c = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "sync"}])
            streamed = "".join(ch.choices[0].delta.content or "" for ch in oa.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "sync"}], stream=True) if ch.choices)
            return c.choices[0].message.content, streamed
    plain, streamed = await asyncio.to_thread(use_sync)
    assert plain == streamed == "".join(default_tokens("sync", 16))


async def test_gateway_fields_ride_along_as_extension_fields(stack, double):
    key = await stack.key("alice")
    await stack.add_node(double.url, name="a")
    b = await stack.add_node(double.url, name="b")
    await stack.wait_nodes_serving(MODEL, count=2)
    async with client(stack, key) as oa:
        for _ in range(3):
            c = await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                 extra_body={"node_id": b.node_id, "max_wallclock_secs": 30})
            assert (await stack.wait_job(key, c.id))["node_id"] == b.node_id
        with pytest.raises(openai.BadRequestError) as err:
            await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                             extra_body={"node_id": "not a node"})
        assert err.value.param == "node_id"


async def test_embeddings_from_token_arrays_and_with_dimensions(stack):
    import bpe_openai

    cl100k = bpe_openai.get_encoding("cl100k_base")  # what langchain's OpenAIEmbeddings tokenizes with
    texts = ["Hello world", "naïve café 🌟"]
    async with OllamaDouble(models=[EMBED], embed_dim=8) as d:
        key = await stack.ready(d, EMBED)
        async with client(stack, key) as oa:
            arrays = await oa.embeddings.create(model=EMBED, input=[cl100k.encode(t) for t in texts],
                                                encoding_format="float")
            sent = d.requests_to("/api/embed")[-1].body
            one = await oa.embeddings.create(model=EMBED, input=cl100k.encode(texts[0]), encoding_format="float")
            short = await oa.embeddings.create(model=EMBED, input="x", dimensions=4, encoding_format="float")
            sent_short = d.requests_to("/api/embed")[-1].body
            with pytest.raises(openai.BadRequestError) as err:
                await oa.embeddings.create(model=EMBED, input=["a", [1, 2]])
            assert err.value.param == "input"
    assert sent["input"] == texts
    assert [e.embedding for e in arrays.data] == [embedding(t, 8) for t in texts]
    assert one.data[0].embedding == embedding(texts[0], 8)
    assert sent_short["dimensions"] == 4 and short.data[0].embedding == embedding("x", 4)


async def test_n_choices_are_independent_jobs_streamed_and_not(stack):
    async with OllamaDouble(models=[MODEL], token_count=6, delay_ms=1) as d:
        key = await stack.ready(d, MODEL, slots=4)
        async with client(stack, key) as oa:
            c = await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=2, seed=5)
            seeds = sorted(r.body["options"]["seed"] for r in d.requests_to("/api/chat")[-2:])
            stream = await oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=3,
                                                      stream=True, stream_options={"include_usage": True})
            chunks = [ch async for ch in stream]
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": "x"}], n=2,
                    extra_headers={"Idempotency-Key": "k1"})
            assert err.value.param == "n"
        jobs = (await stack.client.get("/api/v1/jobs", headers=stack.auth(key))).json()["jobs"]
    expected = "".join(default_tokens("x", 6))
    assert [ch.index for ch in c.choices] == [0, 1] and all(ch.message.content == expected for ch in c.choices)
    assert seeds == [5, 6]  # each choice its own job, its own seed
    # The answer's id is one of its own two jobs (submitted together, so either may be first).
    assert c.usage.completion_tokens == 12 and c.id in {j["id"] for j in jobs[-2:]}
    texts = {i: "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices and ch.choices[0].index == i)
             for i in range(3)}
    assert texts == {0: expected, 1: expected, 2: expected}
    assert len({ch.id for ch in chunks}) == 1
    finishes = sorted(ch.choices[0].index for ch in chunks if ch.choices and ch.choices[0].finish_reason)
    assert finishes == [0, 1, 2] and chunks[-1].usage.completion_tokens == 18
    assert len(jobs) == 5 and all(j["status"] == "completed" for j in jobs)


async def test_v1_answers_504_for_a_timed_out_job_and_409_for_a_cancelled_one(stack):
    async with OllamaDouble(models=[MODEL], stall_after=0) as d:
        key = await stack.ready(d, MODEL, slots=2)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        # The job outlives its wall-clock budget on a stalled engine: 504, code timeout.
        r = await stack.client.post("/v1/chat/completions", json=body | {"max_wallclock_secs": 1.0},
                                    headers=stack.auth(key))
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text

        # The job is cancelled (DELETE on the native API) while the /v1 request waits for it: 409, code cancelled.
        waiting = asyncio.create_task(stack.client.post("/v1/chat/completions", json=body, headers=stack.auth(key)))

        async def running():
            jobs = (await stack.client.get("/api/v1/jobs?status=processing", headers=stack.auth(key))).json()["jobs"]
            return jobs[0]["id"] if jobs else None
        job_id = await wait_until(running, timeout=30, message="the /v1 job never started")
        assert (await stack.client.delete(f"/api/v1/jobs/{job_id}", headers=stack.auth(key))).status_code == 200
        r = await waiting
        assert r.status_code == 409 and r.json()["error"]["code"] == "cancelled", r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
