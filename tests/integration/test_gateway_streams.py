"""Gateway behaviours on the streamed and OpenAI paths: the routing event first, x-model-used, idempotent /v1."""

from __future__ import annotations

import openai

from tests.doubles.ollama_double import OllamaDouble
from tests.sse import SSEReader

SMALL, LARGE = "qwen2.5:7b", "qwen2.5:72b"
CODE = [{"role": "user", "content": "Write a Python function to sort a list"}]



async def test_streams_send_the_routing_decision_before_any_token(stack):
    async with OllamaDouble(models=[SMALL, LARGE]) as d:
        key = await stack.ready(d, LARGE, slots=4)

        # Native SSE: an `event: routing` before the job event and the tokens.
        body = {"model": "auto", "messages": CODE, "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            assert r.headers["x-model-used"] == SMALL
            events = [e async for e in SSEReader(r).events()]
        assert [e.event for e in events[:2]] == ["routing", "job"]
        routing = events[0].json()
        assert routing["object"] == "routing" and routing["model"] == SMALL and routing["task"] == "code_generation"
        assert events[-1].event == "done"

        # /v1 streamed: every chunk has choices (the documented `chunk.choices[0]` loop works) and names the model
        # used; the decision rides on the first chunk as an extension field, and x-model-used says it too.
        sdk = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)
        raw = await sdk.chat.completions.with_raw_response.create(model="auto", messages=CODE, stream=True)
        assert raw.headers["x-model-used"] == SMALL
        text, chunks = "", []
        async for chunk in raw.parse():
            text += chunk.choices[0].delta.content or ""
            chunks.append(chunk)
        assert text and all(c.model == SMALL and c.object == "chat.completion.chunk" for c in chunks)
        routing = chunks[0].model_extra["routing"]
        assert routing["object"] == "routing" and routing["model"] == SMALL and routing["task"] == "code_generation"
        assert all("routing" not in (c.model_extra or {}) for c in chunks[1:])

        # /v1 non-streamed: the decision is in x-model-used.
        raw = await sdk.chat.completions.with_raw_response.create(model="auto", messages=CODE)
        assert raw.headers["x-model-used"] == SMALL and raw.parse().model == SMALL


async def test_idempotency_key_on_v1_returns_the_original_completion(stack):
    async with OllamaDouble(models=[SMALL]) as d:
        key = await stack.ready(d, SMALL)
        body = {"model": SMALL, "messages": [{"role": "user", "content": "once only"}]}
        headers = stack.auth(key) | {"Idempotency-Key": "retry-7"}
        first = await stack.client.post("/v1/chat/completions", json=body, headers=headers)
        again = await stack.client.post("/v1/chat/completions", json=body, headers=headers)
        assert first.status_code == again.status_code == 200
        assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
        assert first.json()["choices"][0]["message"]["content"] == again.json()["choices"][0]["message"]["content"]
        assert len(d.requests_to("/api/chat")) == 1  # it ran once
        other = await stack.client.post("/v1/chat/completions", headers=headers,
                                        json={**body, "messages": [{"role": "user", "content": "different"}]})
        assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
