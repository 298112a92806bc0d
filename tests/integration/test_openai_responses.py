"""OpenAI's Responses API through the official `openai` SDK: text, instructions, previous_response_id, function
calls and their outputs, text.format json_schema, streaming with the Responses events, retrieval."""

from __future__ import annotations

import json

import openai
import pytest

from tests.doubles.ollama_double import OllamaDouble, default_tokens, tool_arguments

MODEL = "qwen2.5:7b"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


async def _sdk(stack, d) -> openai.AsyncOpenAI:
    key = await stack.ready(d, MODEL)
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60)


async def test_text_instructions_previous_response_and_retrieve(stack):
    async with OllamaDouble(models=[MODEL]) as d:
        async with await _sdk(stack, d) as oa:
            first = await oa.responses.create(model=MODEL, input="Tell me a joke", instructions="Be brief.",
                                              max_output_tokens=64, metadata={"ticket": "7"})
            second = await oa.responses.create(model=MODEL, input="Another one", previous_response_id=first.id)
            sent = d.requests_to("/api/chat")[-1].body["messages"]
            got = await oa.responses.retrieve(first.id)
            hidden = await oa.responses.create(model=MODEL, input="secret", store=False)
            with pytest.raises(openai.NotFoundError):
                await oa.responses.retrieve(hidden.id)
            with pytest.raises(openai.NotFoundError) as err:
                await oa.responses.create(model=MODEL, input="x", previous_response_id=hidden.id)
            assert err.value.param == "previous_response_id"
            with pytest.raises(openai.BadRequestError) as err:
                await oa.responses.create(model=MODEL, input="x", tools=[{"type": "web_search"}])
            assert err.value.param == "tools"
    assert first.object == "response" and first.status == "completed" and first.model == MODEL
    assert first.output_text == "".join(default_tokens("Be brief.\nTell me a joke", 16))
    assert first.output[0].type == "message" and first.output[0].content[0].type == "output_text"
    assert first.instructions == "Be brief." and first.metadata == {"ticket": "7"}
    assert first.usage.output_tokens == 16 and first.usage.total_tokens == first.usage.input_tokens + 16
    # The earlier turn (without its instructions) and its answer come before the new input.
    assert sent == [{"role": "user", "content": "Tell me a joke"},
                    {"role": "assistant", "content": first.output_text},
                    {"role": "user", "content": "Another one"}]
    assert second.previous_response_id == first.id and second.instructions is None
    assert got.id == first.id and got.output_text == first.output_text and got.status == "completed"


async def test_function_calls_and_outputs_round_trip(stack):
    async with OllamaDouble(models=[MODEL]) as d:
        async with await _sdk(stack, d) as oa:
            first = await oa.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
            [call] = [o for o in first.output if o.type == "function_call"]
            second = await oa.responses.create(
                model=MODEL, previous_response_id=first.id, tools=[WEATHER],
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'}])
            sent = d.requests_to("/api/chat")[-1].body["messages"]
            stateless = await oa.responses.create(model=MODEL, tools=[WEATHER], input=[
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'}])
    assert call.name == "get_weather" and call.status == "completed" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == tool_arguments(WEATHER["parameters"], "Weather in Paris?")
    assert first.output_text == ""
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[2] == {"role": "tool", "content": '{"temp_c": 18}', "tool_name": "get_weather"}
    assert second.output_text and second.output[0].type == "message"
    assert stateless.output_text == second.output_text


async def test_streaming_uses_the_responses_events_and_json_schema_format(stack):
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    async with OllamaDouble(models=[MODEL], token_count=12, delay_ms=1) as d:
        async with await _sdk(stack, d) as oa:
            stream = await oa.responses.create(model=MODEL, input="Say hi", stream=True)
            events = [e async for e in stream]
            async with oa.responses.stream(model=MODEL, input="Weather in Paris?", tools=[WEATHER]) as s:
                called = await s.get_final_response()
            shaped = await oa.responses.create(model=MODEL, input="json please", text={"format": {
                "type": "json_schema", "name": "answer", "schema": schema, "strict": True}})
            sent = d.requests_to("/api/chat")[-1].body
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(kinds[4:-4]) > 1
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(default_tokens("Say hi", 12)) == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens == 12
    assert [o.type for o in called.output] == ["function_call"] and called.output[0].name == "get_weather"
    assert sent["format"] == schema and json.loads(shaped.output_text)["text"]
