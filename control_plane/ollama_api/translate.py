"""Ollama's request and answer shapes <-> the /v1 chat and embeddings requests the network runs (pure).

Ollama messages carry images as base64 and tool calls without ids, with object arguments, and name a tool
result by its function (`tool_name`); ids are made here and tool results are matched to the latest call of
that function. `options`: num_predict (default 512, as the native API), temperature, top_p, stop, seed,
frequency_penalty, presence_penalty; other options are not honoured by every engine and are a 400.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timezone
from typing import Any

import msgspec

from control_plane.errors import BadRequest
from control_plane.openai import schemas as oa
from protocol.messages import ModelInfo

DEFAULT_NUM_PREDICT = 512
#: The Ollama API level these endpoints follow (what /api/version reports).
API_VERSION = "0.13.0"
_OPTIONS = {"num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p", "stop": "stop",
            "seed": "seed", "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}
#: Options that only tune how Ollama loads or runs a model: harmless to leave to the node's engine.
_LOAD_OPTIONS = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap", "use_mlock", "numa",
                 "low_vram", "f16_kv", "vocab_only", "num_keep"}
_TO_OLLAMA = {"chat": "completion", "embeddings": "embedding", "tools": "tools", "vision": "vision"}


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _sampling(options: dict[str, Any] | None, fields: dict[str, Any]) -> None:
    for name, value in (options or {}).items():
        if name in _OPTIONS:
            if name == "num_predict" and isinstance(value, int) and value < 0:
                continue  # -1: "until done"; the default bound applies
            fields[_OPTIONS[name]] = value
        elif name not in _LOAD_OPTIONS:
            raise BadRequest(f"option {name!r} is not supported on this network", param=f"options.{name}")
    fields.setdefault("max_tokens", DEFAULT_NUM_PREDICT)


def _format(fmt: Any) -> dict[str, Any] | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise BadRequest('format must be "json" or a JSON Schema object', param="format")


def _messages(raw: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    latest: dict[str, str] = {}  # function name -> id of its latest call
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", param="messages")
        role = m.get("role")
        text = m.get("content")
        text = "" if text is None else text
        if not isinstance(text, str):
            raise BadRequest(f"messages[{i}].content must be a string", param="messages")
        images = m.get("images")
        if images is not None and not (isinstance(images, list) and all(isinstance(b, str) for b in images)):
            raise BadRequest(f"messages[{i}].images must be a list of base64 strings", param="messages")
        msg: dict[str, Any] = {"role": role, "content": text}
        if images:
            msg["content"] = ([{"type": "text", "text": text}] if text else []) + [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}} for b64 in images]
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                function = (call or {}).get("function") or {}
                args = function.get("arguments")
                call_id = "call_" + secrets.token_hex(12)
                latest[str(function.get("name"))] = call_id
                calls.append({"id": call_id, "type": "function", "function": {
                    "name": function.get("name"), "arguments": args if isinstance(args, str) else json.dumps(args or {})}})
            msg["tool_calls"] = calls
        if role == "tool":
            name = m.get("tool_name") or m.get("name")
            msg["tool_call_id"] = latest.get(str(name)) or "call_" + hashlib.sha256(str(name).encode()).hexdigest()[:24]
            if name:
                msg["name"] = name
        out.append(msg)
    return out


def chat_request(body: dict[str, Any], *, stream_default: bool = True) -> oa.ChatCompletionRequest:
    """An Ollama /api/chat body as the /v1 chat request it runs as."""
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise BadRequest("messages must be a non-empty list", param="messages")
    fields: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body["messages"])}
    return _finish(body, fields, stream_default)


def generate_request(body: dict[str, Any]) -> oa.ChatCompletionRequest:
    """An Ollama /api/generate body as a chat request: `system`, then the prompt (with its images) as a user turn."""
    if body.get("raw"):
        raise BadRequest("raw prompts are not supported: the prompt runs through the model's chat template",
                         param="raw")
    for name in ("suffix", "context", "template"):
        if body.get(name):
            raise BadRequest(f"{name} is not supported on this network", param=name)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string", param="prompt")
    messages = ([{"role": "system", "content": body["system"]}] if body.get("system") else [])
    messages.append({"role": "user", "content": prompt, **({"images": body["images"]} if body.get("images") else {})})
    fields: dict[str, Any] = {"model": body.get("model"), "messages": _messages(messages)}
    return _finish(body, fields, True)


def _finish(body: dict[str, Any], fields: dict[str, Any], stream_default: bool) -> oa.ChatCompletionRequest:
    _sampling(body.get("options"), fields)
    stream = body.get("stream", stream_default)
    fields["stream"] = bool(stream)
    if fields["stream"]:
        fields["stream_options"] = {"include_usage": True}
    if (fmt := _format(body.get("format"))) is not None:
        fields["response_format"] = fmt
    if body.get("tools"):
        fields["tools"] = body["tools"]
    if body.get("think"):
        raise BadRequest("think is not supported on this network", param="think")
    try:
        return msgspec.convert(fields, oa.ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}", param="model" if "model" in str(exc) else None) from None


def ollama_calls(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """OpenAI-shaped tool calls as Ollama writes them (arguments as an object)."""
    if not calls:
        return None
    out = []
    for c in calls:
        try:
            args = json.loads(c["function"]["arguments"] or "{}")
        except ValueError:
            args = {}
        out.append({"function": {"name": c["function"]["name"], "arguments": args if isinstance(args, dict) else {}}})
    return out


def timings(usage: dict[str, Any] | None, result: dict[str, Any] | None, total_ns: int) -> dict[str, Any]:
    """The counters of Ollama's final line: token counts from usage, durations from the job's timings."""
    usage = usage or {}
    out: dict[str, Any] = {"total_duration": total_ns, "load_duration": 0,
                           "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
                           "eval_count": int(usage.get("completion_tokens") or 0)}
    tps = (result or {}).get("tokens_per_second")
    if tps and out["eval_count"]:
        out["eval_duration"] = int(out["eval_count"] / tps * 1e9)
    return out


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def details(info: ModelInfo | None) -> dict[str, Any]:
    return {"parent_model": "", "format": "gguf", "family": "", "families": None, "parameter_size": "",
            "quantization_level": ""}


def capabilities(caps: frozenset[str]) -> list[str]:
    return sorted(_TO_OLLAMA[c] for c in caps if c in _TO_OLLAMA)
