"""Token bounds a job's charge is capped at, from the control plane's own count with the model's tokenizer.

An honest engine's figures stay under these bounds; a node claiming more is charged the bound (and counted
against) by the `jobs_check_usage` trigger (migrations 0080, 0082), which also adds the bytes of the job's
longest stop string to the completion bound (the tokens that made a stop string are generated, counted, and
cut from the text). The slacks are measured: docs/trust.md, `bench/usage_bound.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from control_plane.trust.tokenizers import TokenCounter

#: Completion tokens an honest engine may count beyond the relayed text's own count: an end-of-generation
#: token (engines that count it) and a multi-byte character cut at max_tokens (its bytes are dropped, not sent).
COMPLETION_SLACK = 2
#: ... and one per 32 tokens of text: a sampled answer's tokens need not be the ones the tokenizer would choose
#: for the same text ("hel" + "lo" for "hello"). Measured on SmolLM2 (bench/usage_bound.py, 80 jobs of up to
#: 128 tokens, temperature 0 to 2): at most 2 more than the count, so this is about 3x what was seen.
COMPLETION_SLACK_PER_32 = 1
#: Per tool call: an engine's own JSON spacing and call framing (e.g. <tool_call> markers) around the call.
#: Measured: a forced call on SmolLM2 took up to 11 tokens more than its name and arguments counted here.
TOOL_CALL_SLACK = 16
#: Prompt tokens beyond the count with the model's own chat template. llama.cpp counts exactly this (measured:
#: 0 difference without tools); another engine's template of the same model (e.g. Ollama's) may add a few
#: markers or newlines, per prompt and per message (not measured here: no such engine on this machine).
PROMPT_SLACK = 16
PROMPT_SLACK_PER_MESSAGE = 4
#: Per offered tool: the engine's wording around the tool's JSON description (the built-in engine's: 67 tokens
#: more than the template for one tool, of which the tool's JSON is counted); per image, what a vision encoder
#: makes of one image (as the byte bound of migration 0080).
TOOL_SPEC_SLACK = 64
IMAGE_TOKENS = 1024


def template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The stored request's messages as a chat template takes them: role and text (calls as their JSON)."""
    out = []
    for m in messages:
        content = m.get("content") if isinstance(m.get("content"), str) else ""
        calls = m.get("tool_calls") or ()
        if calls:
            content = "\n".join(json.dumps({"name": c.get("name"), "arguments": c.get("arguments")},
                                           ensure_ascii=False) for c in calls) + ("\n" + content if content else "")
        out.append({"role": str(m.get("role") or "user"), "content": content})
    return out


def tool_specs_text(request: dict[str, Any]) -> str:
    """The offered tools' descriptions as text (what an engine puts into the prompt for them)."""
    tools = (request.get("params") or {}).get("tools") or ()
    return "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)


def prompt_bound(template_tokens: int, request: dict[str, Any], tool_spec_tokens: int = 0) -> int:
    """The most prompt tokens an honest engine reports for this request, given the templated prompt's count."""
    messages = request.get("messages") or ()
    tools = len((request.get("params") or {}).get("tools") or ())
    images = sum(len(m.get("images") or ()) for m in messages)
    return (template_tokens + PROMPT_SLACK + PROMPT_SLACK_PER_MESSAGE * len(messages)
            + tool_spec_tokens + TOOL_SPEC_SLACK * tools + IMAGE_TOKENS * images)


def completion_bound(text_tokens: int, call_tokens: Sequence[int] = ()) -> int:
    """The most completion tokens an honest engine reports for a relayed answer of `text_tokens` tokens of
    content and `call_tokens` tokens per tool call (without the stop-string part the trigger adds)."""
    counted = text_tokens + sum(call_tokens)
    return counted + COMPLETION_SLACK + COMPLETION_SLACK_PER_32 * (counted // 32) + TOOL_CALL_SLACK * len(call_tokens)


async def request_prompt_bound(counter: TokenCounter, model: str, request: dict[str, Any]) -> int | None:
    """The prompt bound for a chat request to `model`, or None when the control plane has no tokenizer for it."""
    if not counter.covers(model):
        return None
    template = await counter.prompt_tokens(model, template_messages(request.get("messages") or ()))
    if template is None:
        return None
    specs = tool_specs_text(request)
    spec_tokens = (await counter.text_tokens([model], [specs])).get(model, [0])[0] if specs else 0
    return prompt_bound(template, request, spec_tokens)


async def result_completion_bounds(counter: TokenCounter, models: Iterable[str], content: str,
                                   call_texts: Sequence[str]) -> dict[str, int]:
    """Per model the job may be of (and the control plane has a tokenizer for): the completion bound of a
    result with this content and these tool calls (their text: tokenizers.tool_call_texts)."""
    counts = await counter.text_tokens(models, [content, *call_texts])
    return {model: completion_bound(c[0], c[1:]) for model, c in counts.items()}
