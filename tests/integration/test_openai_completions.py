"""The legacy `/v1/completions` through the official `openai` SDK (`client.completions.create`), streamed and not."""

from __future__ import annotations

import openai
import pytest

from tests.doubles.ollama_double import OllamaDouble, default_tokens

MODEL = "qwen2.5:7b"


async def test_legacy_completions_streamed_and_not(stack):
    async with OllamaDouble(models=[MODEL], token_count=20, delay_ms=1) as d:
        key = await stack.ready(d, MODEL)
        async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60) as oa:
            c = await oa.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=50, temperature=0.2)
            sent = d.requests_to("/api/chat")[-1].body
            short = await oa.completions.create(model=MODEL, prompt=["Once upon a time"])
            stream = await oa.completions.create(model=MODEL, prompt="Once upon a time", stream=True, max_tokens=50,
                                                 stream_options={"include_usage": True})
            chunks = [ch async for ch in stream]
            scored = await oa.completions.create(model=MODEL, prompt="x", logprobs=2, max_tokens=3)
            for bad, param in ((dict(echo=True), "echo"), (dict(suffix="end"), "suffix"),
                               (dict(prompt=[[1, 2, 3]]), "prompt"), (dict(best_of=3), "best_of")):
                with pytest.raises(openai.BadRequestError) as err:
                    await oa.completions.create(**{"model": MODEL, "prompt": "x", **bad})
                assert err.value.param == param
    expected = "".join(default_tokens("Once upon a time", 20))
    assert c.object == "text_completion" and c.id.startswith("job_") and c.model == MODEL
    assert c.choices[0].text == expected and c.choices[0].finish_reason == "stop"
    assert c.usage.completion_tokens == 20 and c.usage.total_tokens == c.usage.prompt_tokens + 20
    assert sent["messages"] == [{"role": "user", "content": "Once upon a time"}]
    assert sent["options"]["num_predict"] == 50 and sent["options"]["temperature"] == 0.2
    # OpenAI's default of 16 tokens.
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 16
    assert all(ch.object == "text_completion" for ch in chunks)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == expected
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    lp = scored.choices[0].logprobs
    assert lp.tokens == list(default_tokens("x", 16)[:3]) and lp.token_logprobs == [-0.25, -0.5, -0.75]
    assert lp.top_logprobs[0] == {"alt0": -1.0, "alt1": -2.0} and lp.text_offset[0] == 0
