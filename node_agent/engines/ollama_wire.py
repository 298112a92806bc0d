"""What Infernet's chat messages, tools and options become in Ollama's API, and Ollama's answers back (pure).

Ollama differs from OpenAI in three ways that matter here: a tool call's `arguments` is a JSON object
(OpenAI: a JSON text), a call has no id (we make one), and a tool result names its function
(`tool_name`) rather than the call id. `tool_choice` has no Ollama equivalent: "none" sends no tools,
a named function sends only that tool, "auto" and "required" send them all (Ollama cannot force a call).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from protocol import ChatMessage, GenerationParams, TokenLogprob, ToolCall, TopLogprob

#: The first Ollama release whose /api/chat reports logprobs.
LOGPROBS_SINCE = (0, 12, 11)
#: Ollama's /api/show capability names -> ours ("insert" and "thinking" have no counterpart).
_CAPABILITIES = {"completion": "chat", "embedding": "embeddings", "tools": "tools", "vision": "vision"}


def messages(items: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Ollama /api/chat messages; keys beyond role and content only when set."""
    out = []
    for m in items:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.images:
            msg["images"] = list(m.images)
        if m.tool_calls:
            msg["tool_calls"] = [{"function": {"name": c.name, "arguments": arguments_object(c.arguments)}}
                                 for c in m.tool_calls]
        if m.role == "tool" and m.name:
            msg["tool_name"] = m.name
        out.append(msg)
    return out


def arguments_object(text: str) -> dict[str, Any]:
    """A call's JSON-text arguments as the object Ollama wants (text that is not an object: empty)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tools(params: GenerationParams) -> list[dict[str, Any]] | None:
    """The tools to send, after tool_choice: None for none (or no tools), only the named one for a name."""
    choice = params.tool_choice
    if not params.tools or choice == "none":
        return None
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        return [t for t in params.tools if (t.get("function") or {}).get("name") == name] or None
    return list(params.tools)


def options(params: GenerationParams) -> dict[str, Any]:
    """Ollama's `options` for the sampling parameters it has."""
    out: dict[str, Any] = {"num_predict": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p}
    if params.stop:
        out["stop"] = list(params.stop)
    if params.seed is not None:
        out["seed"] = params.seed
    if params.frequency_penalty is not None:
        out["frequency_penalty"] = params.frequency_penalty
    if params.presence_penalty is not None:
        out["presence_penalty"] = params.presence_penalty
    return out


def tool_calls(raw: Iterable[Any] | None) -> list[ToolCall]:
    """Ollama's `message.tool_calls` (dicts or client objects) as ToolCalls with fresh ids."""
    calls = []
    for item in raw or ():
        function = _get(item, "function")
        name = _get(function, "name")
        if not isinstance(name, str) or not name:
            continue
        args = _get(function, "arguments")
        text = args if isinstance(args, str) else json.dumps(dict(args or {}), ensure_ascii=False)
        call_id = _get(item, "id")
        calls.append(ToolCall(id=call_id if isinstance(call_id, str) and call_id else new_call_id(),
                              name=name, arguments=text))
    return calls


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def capabilities(reported: Iterable[str] | None, *, embeddings: bool) -> tuple[str, ...]:
    """Our capability names for what /api/show reported (None: unknown, from the embedding heuristic)."""
    if reported is None:
        return ("embeddings",) if embeddings else ("chat",)
    return tuple(sorted({_CAPABILITIES[c] for c in reported if c in _CAPABILITIES}))


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def has_logprobs(version: str) -> bool:
    """Does this Ollama version report logprobs ('' or unparsable: no)."""
    try:
        parts = tuple(int(p) for p in version.split("-")[0].split(".")[:3])
    except ValueError:
        return False
    return bool(parts) and parts >= LOGPROBS_SINCE


def logprobs(raw: Iterable[Any]) -> list[TokenLogprob]:
    """A chunk's `logprobs` entries (dicts or client objects) as TokenLogprobs."""
    out = []
    for item in raw:
        token, value = _get(item, "token"), _get(item, "logprob")
        if isinstance(token, str) and isinstance(value, (int, float)):
            top = tuple(TopLogprob(t, float(v)) for alt in _get(item, "top_logprobs") or ()
                        if isinstance(t := _get(alt, "token"), str) and isinstance(v := _get(alt, "logprob"), (int, float)))
            out.append(TokenLogprob(token, float(value), top))
    return out
