"""Function calling through /v1 with the official `openai` SDK: the Ollama double and the OpenAI-compatible double
as engines (each speaking tools as its real server does), placement on tool-capable nodes only."""

from __future__ import annotations

import json

import openai
import pytest

from tests.doubles.ollama_double import DoubleModel, OllamaDouble, default_tokens, tool_arguments
from tests.doubles.openai_double import OpenAIDouble
from tests.harness import Stack

MODEL = "qwen2.5:7b"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def client(stack: Stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60)



async def test_tool_round_trip_through_the_ollama_engine(stack):
    async with OllamaDouble(models=[MODEL]) as d:
        key = await stack.ready(d, MODEL)
        async with client(stack, key) as oa:
            first = await oa.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME])
            call = first.choices[0].message.tool_calls[0]
            sent_first = d.requests_to("/api/chat")[-1].body
            history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                       {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'}]
            second = await oa.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER, TIME])
            sent_second = d.requests_to("/api/chat")[-1].body
    # The model's call, in OpenAI's shape: arguments are JSON text, the call has an id.
    assert first.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message.content is None and len(first.choices[0].message.tool_calls) == 1
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == tool_arguments(WEATHER["function"]["parameters"], ASK[0]["content"])
    # Ollama got the tools as its API has them ...
    assert sent_first["tools"] == [WEATHER | {"function": {**WEATHER["function"]}}, TIME | {
        "function": {**TIME["function"]}}]
    # ... and the assistant's call back with arguments as an object, the result named by its function.
    assert sent_second["messages"][1]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": json.loads(call.function.arguments)}}]
    assert sent_second["messages"][1]["role"] == "assistant" and not sent_second["messages"][1].get("content")
    assert sent_second["messages"][2] == {"role": "tool", "content": '{"temp_c": 18}', "tool_name": "get_weather"}
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.tool_calls is None
    prompt = "\n".join([ASK[0]["content"], "", '{"temp_c": 18}'])
    assert second.choices[0].message.content == "".join(default_tokens(prompt, 16))


async def test_streamed_tool_calls_have_openais_delta_shape(stack):
    async with OllamaDouble(models=[MODEL], tool_calls_per_reply=2) as d:
        key = await stack.ready(d, MODEL)
        async with client(stack, key) as oa:
            stream = await oa.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], stream=True,
                                                      stream_options={"include_usage": True})
            chunks = [c async for c in stream]
            # The SDK's own accumulator builds the whole message from the deltas.
            async with oa.chat.completions.stream(model=MODEL, messages=ASK, tools=[WEATHER, TIME]) as s:
                final = await s.get_final_completion()
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1 and [t.index for t in deltas[0]] == [0, 1]
    assert [(t.type, t.function.name) for t in deltas[0]] == [("function", "get_weather"), ("function", "get_time")]
    assert all(t.id.startswith("call_") and json.loads(t.function.arguments) is not None for t in deltas[0])
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls"] and chunks[-1].usage is not None
    message = final.choices[0].message
    assert [t.function.name for t in message.tool_calls] == ["get_weather", "get_time"]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_tool_choice_none_and_named_as_ollama_can_honour_them(stack):
    async with OllamaDouble(models=[MODEL]) as d:
        key = await stack.ready(d, MODEL)
        async with client(stack, key) as oa:
            plain = await oa.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none")
            assert not d.requests_to("/api/chat")[-1].body.get("tools")  # the client sends [] for none
            named = await oa.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME],
                                                     tool_choice={"type": "function", "function": {"name": "get_time"}})
            assert [t["function"]["name"] for t in d.requests_to("/api/chat")[-1].body["tools"]] == ["get_time"]
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                                 tool_choice={"type": "function", "function": {"name": "nope"}})
            assert err.value.param == "tool_choice"
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=MODEL, messages=ASK, tools=[{"type": "code_interpreter"}])
            assert err.value.param == "tools" and "code_interpreter" in err.value.message
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=MODEL, messages=[*ASK, {"role": "tool", "content": "x"}])
            assert "tool_call_id" in err.value.message
    assert plain.choices[0].finish_reason == "stop" and plain.choices[0].message.content
    assert named.choices[0].message.tool_calls[0].function.name == "get_time"


async def test_tool_jobs_go_only_to_tool_capable_nodes_and_are_refused_when_none_is(stack):
    plain_model = DoubleModel(MODEL, capabilities=("completion",))
    async with OllamaDouble(models=[plain_model]) as plain, OllamaDouble(models=[MODEL]) as tooled:
        key = await stack.ready(plain, MODEL, name="plain", slots=4)
        async with client(stack, key) as oa:
            with pytest.raises(openai.BadRequestError) as err:  # at once, not after a timeout
                await oa.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
            assert err.value.code == "capability_unavailable" and err.value.param == "tools"
            assert "tools" in err.value.message and MODEL in err.value.message
            tool_node = await stack.add_node(tooled.url, name="tooled", slots=4)
            await stack.wait_nodes_serving(MODEL, count=2)
            nodes = set()
            for _ in range(4):
                c = await oa.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
                assert c.choices[0].finish_reason == "tool_calls"
                nodes.add((await stack.wait_job(key, c.id))["node_id"])
            assert nodes == {tool_node.node_id}
            assert plain.requests_to("/api/chat") == []
            # The capabilities are visible to everyone.
            listed = (await stack.client.get("/api/v1/nodes", headers=stack.auth(key))).json()["nodes"]
            caps = {n["name"]: n["models"][0]["capabilities"] for n in listed}
            assert caps == {"plain": ["chat", "logprobs"], "tooled": ["chat", "logprobs", "tools"]}


async def test_tools_logprobs_and_penalties_through_the_openai_compatible_engine(stack):
    async with OpenAIDouble(models=["double-chat"], token_count=4) as d:
        d.tool_calls_per_reply = 2
        key = await stack.ready(d, "double-chat", engine="openai")
        async with client(stack, key) as oa:
            both = await oa.chat.completions.create(model="double-chat", messages=ASK, tools=[WEATHER, TIME])
            one = await oa.chat.completions.create(model="double-chat", messages=ASK, tools=[WEATHER, TIME],
                                                   parallel_tool_calls=False, tool_choice="required")
            sent = d.requests[-1]["body"]
            stream = await oa.chat.completions.create(model="double-chat", messages=ASK, tools=[WEATHER, TIME],
                                                      stream=True, tool_choice={"type": "function",
                                                                                "function": {"name": "get_time"}})
            streamed = [c async for c in stream]
            scored = await oa.chat.completions.create(model="double-chat", messages=[{"role": "user", "content": "x"}],
                                                      logprobs=True, top_logprobs=2, frequency_penalty=0.5,
                                                      presence_penalty=-0.5, logit_bias={"42": -100})
            sent_scored = d.requests[-1]["body"]
    assert [t.function.name for t in both.choices[0].message.tool_calls] == ["get_weather", "get_time"]
    assert [t.id for t in both.choices[0].message.tool_calls] == ["call_double0", "call_double1"]
    # The arguments came in three fragments each and were joined whole.
    assert json.loads(both.choices[0].message.tool_calls[0].function.arguments) == tool_arguments(
        WEATHER["function"]["parameters"], ASK[0]["content"])
    assert len(one.choices[0].message.tool_calls) == 1
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)
    calls = [c.choices[0].delta.tool_calls for c in streamed if c.choices and c.choices[0].delta.tool_calls]
    assert [[t.function.name for t in d_] for d_ in calls] == [["get_time"]]
    assert (sent_scored["frequency_penalty"], sent_scored["presence_penalty"]) == (0.5, -0.5)
    assert sent_scored["logit_bias"] == {"42": -100} and sent_scored["top_logprobs"] == 2
    lp = scored.choices[0].logprobs.content
    assert [t.token for t in lp] == ["tok0", " tok1", " tok2", " tok3"]
    assert [t.logprob for t in lp] == [-0.25, -0.5, -0.75, -1.0]
    assert [a.token for a in lp[0].top_logprobs] == ["alt0", "alt1"]


async def test_the_native_jobs_api_carries_tools_and_tool_calls(stack):
    async with OllamaDouble(models=[MODEL]) as d:
        key = await stack.ready(d, MODEL)
        r = await stack.submit(key, model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="auto")
        assert r.status_code == 200, r.text
        job = await stack.wait_job(key, r.json()["id"])
        result = job["result"]
        assert result["finish_reason"] == "tool_calls" and result["content"] == ""
        [call] = result["tool_calls"]
        assert call["type"] == "function" and call["function"]["name"] == "get_weather"
        back = [*ASK, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]
        r = await stack.submit(key, model=MODEL, messages=back, tools=[WEATHER])
        job = await stack.wait_job(key, r.json()["id"])
        assert job["result"]["finish_reason"] == "stop" and "tool_calls" not in job["result"]
        assert d.requests_to("/api/chat")[-1].body["messages"][2] == {
            "role": "tool", "content": "sunny", "tool_name": "get_weather"}
        bad = await stack.submit(key, model=MODEL, messages=ASK, tools=[{"type": "function", "function": {}}])
        assert bad.status_code == 400 and bad.json()["error"] == "bad_request"


async def test_auto_routing_with_tools_chooses_among_tool_capable_models(stack):
    small = DoubleModel("qwen2.5:7b", capabilities=("completion",))  # the router's pick for short prompts
    async with OllamaDouble(models=[small, "qwen2.5:72b"]) as d:
        key = await stack.ready(d, "qwen2.5:72b", slots=4)
        async with client(stack, key) as oa:
            plain = await oa.chat.completions.with_raw_response.create(model="auto", messages=ASK)
            assert plain.headers["x-model-used"] == "qwen2.5:7b"
            raw = await oa.chat.completions.with_raw_response.create(model="auto", messages=ASK, tools=[WEATHER])
            assert raw.headers["x-model-used"] == "qwen2.5:72b"
            assert raw.parse().choices[0].finish_reason == "tool_calls"
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER],
                                                 extra_body={"routing": {"model_pool": ["qwen2.5:7b"]}})
            assert err.value.code == "capability_unavailable"


async def test_openai_features_no_engine_has_are_a_400_naming_them(stack):
    async with OllamaDouble(models=[MODEL]) as d:
        key = await stack.ready(d, MODEL)
        async with client(stack, key) as oa:
            for extra, param in (({"reasoning_effort": "high"}, "reasoning_effort"),
                                 ({"modalities": ["text", "audio"]}, "modalities"),
                                 ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
                                 ({"top_logprobs": 2}, "top_logprobs"),
                                 ({"logit_bias": {"abc": 1}}, "logit_bias")):
                with pytest.raises(openai.BadRequestError) as err:
                    await oa.chat.completions.create(model=MODEL, messages=ASK, **extra)
                assert err.value.param == param
            ok = await oa.chat.completions.create(model=MODEL, messages=ASK, modalities=["text"])
            assert ok.choices[0].message.content
        assert len(d.requests_to("/api/chat")) == 1
