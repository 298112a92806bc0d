"""Popular clients unchanged against real processes (control plane and node agent via their CLIs, an Ollama
double process): the openai SDK's tools, Responses, legacy completions, vision, n, logprobs and auto-routing
loop, and the `ollama` package against the Ollama-compatible API."""

from __future__ import annotations

import base64
import json

import httpx
import ollama
import openai

from tests.doubles.ollama_double import default_tokens
from tests.e2e.cluster import wait_model, wait_warm

MODEL, VISION = "qwen2.5:7b", "llava:7b"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n e2e").decode()


async def test_clients_unchanged_over_real_processes(cluster):
    _, engine = cluster.start_double(f"{MODEL},{VISION}", "--token-count", "8")
    key = cluster.key("alice")
    token = cluster.register_node("gpu-a")
    _, url = cluster.start_control_plane()
    cluster.start_node(token, engine, name="node0", slots=4)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http, \
            openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as oa:
        await wait_warm(http)
        await wait_model(http, key, MODEL)
        await wait_model(http, key, VISION)

        # Tools: a full round trip, then streamed.
        first = await oa.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        final = await oa.chat.completions.create(model=MODEL, tools=[WEATHER], messages=[
            *ASK, first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
        assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
        streamed = [c async for c in await oa.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                                                      stream=True)]
        deltas = [c.choices[0].delta.tool_calls for c in streamed if c.choices and c.choices[0].delta.tool_calls]
        assert deltas[0][0].function.name == "get_weather" and json.loads(deltas[0][0].function.arguments)

        # Responses, streamed; legacy completions; vision; n=2 with logprobs.
        events = [e async for e in await oa.responses.create(model=MODEL, input="Hi", stream=True)]
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert events[-1].response.output_text == "".join(default_tokens("Hi", 8))
        legacy = await oa.completions.create(model=MODEL, prompt="Once", max_tokens=4)
        assert legacy.choices[0].text == "".join(default_tokens("Once", 8)[:4])
        seen = await oa.chat.completions.create(model=VISION, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
        assert seen.choices[0].message.content
        two = await oa.chat.completions.create(model=MODEL, messages=ASK, n=2, logprobs=True, top_logprobs=1)
        assert [c.index for c in two.choices] == [0, 1]
        assert all(len(c.logprobs.content) == 8 for c in two.choices)

        # model "auto" with the plain loop of the OpenAI docs: every chunk has choices.
        text = ""
        async for chunk in await oa.chat.completions.create(model="auto", messages=ASK, stream=True):
            text += chunk.choices[0].delta.content or ""
        assert text

    # The whole network as one Ollama.
    client = ollama.AsyncClient(host=url, headers={"Authorization": f"Bearer {key}"})
    parts = [p async for p in await client.chat(model=MODEL, messages=ASK, stream=True)]
    assert "".join(p.message.content for p in parts) == "".join(default_tokens(ASK[0]["content"], 8))
    assert parts[-1].done and parts[-1].eval_count == 8
    assert {m.model for m in (await client.list()).models} == {MODEL, VISION}
