"""The network as one Ollama: the official `ollama` Python package against the control plane's Ollama-compatible
API (Bearer key in the headers), the nodes running Ollama doubles."""

from __future__ import annotations

import json

import ollama
import pytest

from tests.doubles.ollama_double import OllamaDouble, default_tokens, embedding, tool_arguments

MODEL, EMBED, VISION = "qwen2.5:7b", "nomic-embed-text:latest", "llava:7b"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


async def _client(stack, d) -> ollama.AsyncClient:
    key = await stack.key()
    await stack.add_node(d.url)
    for model in (MODEL, EMBED, VISION):
        await stack.wait_nodes_serving(model)
    return ollama.AsyncClient(host=stack.url, headers={"Authorization": f"Bearer {key}"})


async def test_chat_generate_streamed_and_not(stack):
    async with OllamaDouble(models=[MODEL, EMBED, VISION], token_count=12, delay_ms=1) as d:
        client = await _client(stack, d)
        reply = await client.chat(model=MODEL, messages=[{"role": "user", "content": "Why is the sky blue?"}],
                                  options={"temperature": 0.1, "num_predict": 100, "seed": 3})
        sent = d.requests_to("/api/chat")[-1].body
        # The stream holds after 3 tokens until the first part has reached the client, so parts come before and
        # after that point however fast the node relays (chunks that arrive together may share one part).
        d.stall_after = 3
        parts = []
        async for p in await client.chat(model=MODEL, stream=True,
                                         messages=[{"role": "user", "content": "Why is the sky blue?"}]):
            parts.append(p)
            if len(parts) == 1:
                d.stall_after = None
                d.release()
        gen = await client.generate(model=MODEL, prompt="Hello", system="Be brief.", options={"num_predict": 5})
        gen_parts = [p async for p in await client.generate(model=MODEL, prompt="Hello", stream=True)]
        loaded = await client.generate(model=MODEL, prompt="")
    expected = "".join(default_tokens("Why is the sky blue?", 12))
    assert reply.message.role == "assistant" and reply.message.content == expected
    assert reply.done and reply.done_reason == "stop" and reply.model == MODEL
    assert reply.eval_count == 12 and reply.prompt_eval_count > 0 and reply.eval_duration > 0
    assert sent["options"] == {"num_predict": 100, "temperature": 0.1, "top_p": 1.0, "seed": 3}
    assert "".join(p.message.content for p in parts) == expected and len(parts) > 2
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done and parts[-1].eval_count == 12
    assert gen.response == "".join(default_tokens("Be brief.\nHello", 12)[:5]) and gen.done_reason == "length"
    assert "".join(p.response for p in gen_parts) == "".join(default_tokens("Hello", 12)) and gen_parts[-1].done
    assert loaded.done_reason == "load"


async def test_tools_images_embeddings_and_the_model_listing(stack):
    async with OllamaDouble(models=[MODEL, EMBED, VISION]) as d:
        client = await _client(stack, d)
        called = await client.chat(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                   tools=[WEATHER])
        [call] = called.message.tool_calls
        answered = await client.chat(model=MODEL, tools=[WEATHER], messages=[
            {"role": "user", "content": "Weather in Paris?"}, called.message,
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"}])
        back = d.requests_to("/api/chat")[-1].body["messages"]
        seen = await client.chat(model=VISION, messages=[{"role": "user", "content": "What is this?",
                                                          "images": [b"\x89PNG fake"]}])
        image_sent = d.requests_to("/api/chat")[-1].body["messages"][0]["images"]
        vectors = await client.embed(model=EMBED, input=["one", "two"])
        old = await client.embeddings(model=EMBED, prompt="one")
        tags = await client.list()
        running = await client.ps()
        shown = await client.show(MODEL)
        version = await client._request_raw("GET", "/api/version")
        with pytest.raises(ollama.ResponseError) as err:
            await client.chat(model="nope:1b", messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 404 and "nope:1b" in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            await client.chat(model=EMBED, messages=[{"role": "user", "content": "x"}], tools=[WEATHER])
        assert err.value.status_code == 400 and "tools" in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            await client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}], options={"mirostat": 2})
        assert err.value.status_code == 400 and "mirostat" in err.value.error
    assert call.function.name == "get_weather"
    assert dict(call.function.arguments) == tool_arguments(WEATHER["function"]["parameters"], "Weather in Paris?")
    assert back[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert back[2] == {"role": "tool", "content": "sunny", "tool_name": "get_weather"}
    assert answered.message.content and not answered.message.tool_calls
    assert seen.message.content and image_sent == ["iVBORyBmYWtl"]
    assert [list(v) for v in vectors.embeddings] == [pytest.approx(embedding(t, 16), rel=1e-6) for t in ("one", "two")]
    assert list(old.embedding) == pytest.approx(embedding("one", 16), rel=1e-6)
    assert {m.model for m in tags.models} == {MODEL, EMBED, VISION}
    assert {m.model for m in running.models} == {MODEL, EMBED, VISION}
    assert running.models[0].size > 0
    assert sorted(shown.capabilities) == ["completion", "tools"]
    assert json.loads(version.content)["version"]


async def test_keys_are_required_and_errors_use_ollamas_envelope(stack):
    async with OllamaDouble(models=[MODEL, EMBED, VISION]) as d:
        await _client(stack, d)
        stranger = ollama.AsyncClient(host=stack.url)
        with pytest.raises(ollama.ResponseError) as err:
            await stranger.list()
        assert err.value.status_code == 401
        r = await stack.client.post("/api/chat", json={"model": MODEL, "messages": []},
                                    headers={"Authorization": "Bearer inf_" + "x" * 40})
        assert r.status_code == 401 and set(r.json()) == {"error"}
