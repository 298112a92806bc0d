"""The OpenAI-compatible engine (vLLM, SGLang, llama.cpp's server, LM Studio): /v1/models and streamed chat.

`url` is the server's base URL, with or without the trailing `/v1`. Tools, tool results, images (as
`image_url` data-URL parts), logprobs, penalties and logit_bias are passed as OpenAI's API has them;
streamed tool-call deltas are joined into whole calls. Capabilities: what a /v1/models entry (or the
`models` list llama.cpp's server adds) says in `capabilities`; otherwise an embedding model (by name)
embeds and any other model chats with tools, logprobs and logit_bias (what vLLM, SGLang and llama.cpp's
server support), and vision is assumed only when the server says so. Token counts come from the streamed
`usage` (requested with `stream_options.include_usage`); a server that sends none is counted by content
chunks. Tokens/sec is completion tokens over the time from the first to the last streamed token.

Error mapping (driver error -> EngineError, chained)::

    httpx.TransportError, ConnectionError       -> EngineUnavailable   refused, reset, timed out
    HTTP 429 / 503                              -> EngineBusy          the server's queue is full
    HTTP 404, or a model /v1/models does not list -> ModelUnavailable
    HTTP 400 about the context length            -> ContextLengthExceeded
    other HTTP errors, `error` events mid-stream,
    malformed JSON                               -> GenerationFailed    produced_tokens says if text went out
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from node_agent.engines.base import (
    Completion,
    ContextLengthExceeded,
    Delta,
    EngineError,
    EngineHealth,
    EngineModel,
    EngineUnavailable,
    GenerationFailed,
    ModelUnavailable,
    status_error,
    unreachable,
)
from protocol import ChatMessage, GenerationParams, TokenLogprob, ToolCall, TopLogprob

__all__ = ["DEFAULT_URL", "OpenAICompatEngine", "api_base"]

DEFAULT_URL = "http://127.0.0.1:8000/v1"


def api_base(url: str) -> str:
    """The `/v1` base for a server URL given with or without it."""
    url = url.strip().rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _error_text(body: Any) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}} or {"error": "..."})."""
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(body)


#: How servers word a prompt that does not fit the context ("maximum context length", "context length exceeded",
#: llama.cpp's "exceeds the available context size").
_CONTEXT_WORDS = re.compile(r"context[ _-]?(length|window|size)", re.IGNORECASE)


def _status_error(status: int, body: Any, *, produced: bool = False) -> EngineError:
    message = f"openai-compatible server answered {status}: {_error_text(body)}"
    if status == 400 and _CONTEXT_WORDS.search(message):  # vLLM, llama.cpp server, OpenAI all say it this way
        return ContextLengthExceeded(message, produced_tokens=produced)
    return status_error(status, message, produced_tokens=produced)


def _unavailable(exc: BaseException, *, produced: bool = False) -> EngineUnavailable:
    return unreachable("openai-compatible server", exc, produced_tokens=produced)


#: Capability words servers use in model entries -> ours.
_CAPABILITY_WORDS = {"completion": "chat", "chat": "chat", "tools": "tools", "tool_use": "tools",
                     "function_calling": "tools", "vision": "vision", "multimodal": "vision",
                     "embedding": "embeddings", "embeddings": "embeddings", "logprobs": "logprobs"}
_DEFAULT_CHAT = ("chat", "logit_bias", "logprobs", "tools")


def capabilities(entry: dict[str, Any], extra: dict[str, Any] | None = None) -> tuple[str, ...]:
    """Our capability names for a /v1/models entry (`extra`: the same model in a `models` list, if any)."""
    embeddings = "embed" in str(entry.get("id", "")).lower()
    reported = entry.get("capabilities")
    if not isinstance(reported, list) and extra is not None:
        reported = extra.get("capabilities")
    if not isinstance(reported, list):
        return ("embeddings",) if embeddings else _DEFAULT_CHAT
    found = {_CAPABILITY_WORDS[c] for c in reported if isinstance(c, str) and c in _CAPABILITY_WORDS}
    if "chat" in found:  # sampling features every OpenAI-compatible server has
        found |= {"logprobs", "logit_bias"}
    return tuple(sorted(found)) or (("embeddings",) if embeddings else _DEFAULT_CHAT)


def _message(m: ChatMessage) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.images:
        msg["content"] = ([{"type": "text", "text": m.content}] if m.content else []) + [
            {"type": "image_url", "image_url": {"url": image_data_url(b64)}} for b64 in m.images]
    if m.tool_calls:
        msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in m.tool_calls]
        msg["content"] = m.content or None
    if m.role == "tool":
        msg["tool_call_id"] = m.tool_call_id or ""
        if m.name:
            msg["name"] = m.name
    return msg


def image_data_url(b64: str) -> str:
    """A data URL for a base64 image, its type told by its first bytes (PNG, JPEG, GIF, WebP; else PNG)."""
    head = b64[:16]
    kind = {"iVBOR": "png", "/9j/": "jpeg", "R0lGO": "gif", "UklGR": "webp"}
    mime = next((v for k, v in kind.items() if head.startswith(k)), "png")
    return f"data:image/{mime};base64,{b64}"


def _request_body(model: str, messages: Sequence[ChatMessage], params: GenerationParams) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(m) for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    if params.format == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(params.format, dict):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": params.format}}
    if params.tools:
        body["tools"] = list(params.tools)
        if params.tool_choice is not None:
            body["tool_choice"] = params.tool_choice
        if params.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = params.parallel_tool_calls
    if params.logprobs:
        body["logprobs"] = True
        if params.top_logprobs is not None:
            body["top_logprobs"] = params.top_logprobs
    for name in ("frequency_penalty", "presence_penalty", "logit_bias"):
        if (value := getattr(params, name)) is not None:
            body[name] = value
    return body


class OpenAICompatEngine:
    """Talks to one OpenAI-compatible server; chat streams server-sent events and closes them when abandoned."""

    name = "openai"

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float | None = None,
                 connect_timeout: float = 5.0, health_timeout: float = 5.0) -> None:
        """`api_key` is sent as a Bearer token when set; `timeout` bounds each read (None: none)."""
        self.url = api_base(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers,
                                         timeout=httpx.Timeout(timeout, connect=connect_timeout))
        self._health_timeout = health_timeout
        self._known: set[str] | None = None
        self._version: str | None = None

    async def _get_json(self, path: str, *, timeout: float | None = None) -> Any:
        return await self._request_json("GET", path, timeout=timeout or self._health_timeout)

    async def _request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """One non-streamed call; transport failures and HTTP errors mapped to the engine error tree."""
        try:
            response = await self._client.request(method, path, **kwargs)
        except (httpx.TransportError, ConnectionError) as exc:
            raise _unavailable(exc) from exc
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise _status_error(response.status_code, body)
        return body

    async def health(self) -> EngineHealth:
        try:
            await self._get_json("/models")
        except EngineError as exc:
            return EngineHealth(ok=False, detail=str(exc))
        if self._version is None:
            self._version = await self._server_version()
        return EngineHealth(ok=True, version=self._version or None)

    async def _server_version(self) -> str:
        """vLLM and SGLang answer GET /version at the root; others have no version call ('' = unknown)."""
        root = self.url.removesuffix("/v1")
        try:
            response = await self._client.get(f"{root}/version", timeout=self._health_timeout)
            version = response.json().get("version") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            version = None
        return str(version) if version else ""

    async def list_models(self) -> Sequence[EngineModel]:
        body = await self._get_json("/models")
        entries = body.get("data") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise GenerationFailed(f"openai-compatible server: /v1/models answered without a data list: {body!r:.200}")
        extra = {m.get("model") or m.get("name"): m for m in body.get("models") or () if isinstance(m, dict)}
        models = []
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                ctx = entry.get("max_model_len") or (entry.get("meta") or {}).get("n_ctx_train")
                caps = capabilities(entry, extra.get(entry["id"]))
                models.append(EngineModel(name=entry["id"], loaded=True,
                                          context_length=int(ctx) if isinstance(ctx, int) else None,
                                          embeddings="embeddings" in caps, capabilities=caps))
        self._known = {m.name for m in models}
        return models

    async def _check_model(self, model: str) -> None:
        """ModelUnavailable for a model the server does not list (servers with one model often ignore the name)."""
        if self._known is None or model not in self._known:
            await self.list_models()
        if model not in (self._known or ()):
            raise ModelUnavailable(f"the openai-compatible server at {self.url} does not serve {model!r}")

    async def chat(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta | Completion]:
        """Deltas for each content piece, then one Completion; the HTTP stream closes on exit."""
        await self._check_model(model)
        request = self._client.build_request("POST", "/chat/completions", json=_request_body(model, messages, params))
        try:
            response = await self._client.send(request, stream=True)
        except (httpx.TransportError, ConnectionError) as exc:
            raise _unavailable(exc) from exc
        try:
            if response.status_code >= 400:
                raw = await response.aread()
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                raise _status_error(response.status_code, body)
            async for item in _events(response):
                yield item
        finally:
            await response.aclose()  # the server sees the disconnect and stops generating

    async def embed(self, model: str, inputs: Sequence[str], *,
                    dimensions: int | None = None) -> tuple[list[list[float]], int | None]:
        if not inputs:
            return [], 0
        request: dict[str, Any] = {"model": model, "input": list(inputs)}
        if dimensions is not None:
            request["dimensions"] = dimensions
        body = await self._request_json("POST", "/embeddings", json=request)
        try:
            rows = sorted(body["data"], key=lambda d: d.get("index", 0))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError) as exc:
            raise GenerationFailed(f"openai-compatible server: malformed embeddings response: {exc}") from exc
        if len(vectors) != len(inputs):
            raise GenerationFailed(f"openai-compatible server returned {len(vectors)} embeddings "
                                   f"for {len(inputs)} inputs")
        usage = body.get("usage") or {}
        return vectors, usage.get("prompt_tokens")

    async def aclose(self) -> None:
        await self._client.aclose()


async def _events(response: httpx.Response) -> AsyncIterator[Delta | Completion]:
    """Parse the SSE stream of a chat completion into Deltas and one final Completion."""
    finish: str | None = None
    usage: dict[str, Any] = {}
    calls: dict[int, dict[str, str]] = {}  # index -> id, name, arguments (joined from the deltas)
    logprobs: list[TokenLogprob] | None = None
    counted = 0
    first = last = None
    produced = False
    lines = response.aiter_lines()
    while True:
        try:
            line = await anext(lines)
        except StopAsyncIteration:
            break
        except (httpx.TransportError, ConnectionError) as exc:
            raise _unavailable(exc, produced=produced) from exc
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise GenerationFailed(f"openai-compatible server sent malformed JSON: {data[:200]!r}",
                                   produced_tokens=produced) from exc
        if not isinstance(event, dict):
            continue
        if "error" in event:
            raise GenerationFailed(f"openai-compatible server: {_error_text(event)}", produced_tokens=produced)
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            for part in delta.get("tool_calls") or ():
                _join_call(calls, part)
                produced = True
            if isinstance(choice.get("logprobs"), dict):
                logprobs = (logprobs or []) + _logprobs(choice["logprobs"])
            text = delta.get("content")
            if text:
                now = time.perf_counter()
                first = now if first is None else first
                last = now
                counted += 1
                produced = True
                yield Delta(text)
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    if finish is None and not usage:
        raise GenerationFailed("openai-compatible server: stream ended without a finish reason",
                               produced_tokens=produced)
    completion_tokens = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else counted
    span = (last - first) if first is not None and last is not None else 0.0
    # Tokens after the first one arrived over `span`; scale to all tokens (unknown when only one came).
    eval_seconds = span * completion_tokens / max(counted - 1, 1) if span > 0 and counted > 1 else None
    yield Completion(
        finish_reason="length" if finish == "length" else "stop",
        prompt_tokens=usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None,
        completion_tokens=completion_tokens,
        eval_seconds=eval_seconds,
        extra={"finish_reason": finish} if finish else {},
        tool_calls=[ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"] or "{}")
                    for i, c in sorted(calls.items()) if c["name"]],
        logprobs=logprobs,
    )


def _join_call(calls: dict[int, dict[str, str]], part: Any) -> None:
    """Fold one streamed tool-call delta into the call at its index (id and name once, arguments appended)."""
    if not isinstance(part, dict):
        return
    index = part.get("index") if isinstance(part.get("index"), int) else len(calls)
    call = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
    function = part.get("function") or {}
    if isinstance(part.get("id"), str) and part["id"]:
        call["id"] = part["id"]
    if isinstance(function.get("name"), str) and function["name"]:
        call["name"] = function["name"]
    if isinstance(function.get("arguments"), str):
        call["arguments"] += function["arguments"]


def _logprobs(block: dict[str, Any]) -> list[TokenLogprob]:
    """OpenAI's choice.logprobs.content entries as TokenLogprobs (malformed entries skipped)."""
    out = []
    for item in block.get("content") or ():
        if isinstance(item, dict) and isinstance(item.get("token"), str) and isinstance(item.get("logprob"), (int, float)):
            top = tuple(TopLogprob(t["token"], float(t["logprob"])) for t in item.get("top_logprobs") or ()
                        if isinstance(t, dict) and isinstance(t.get("token"), str)
                        and isinstance(t.get("logprob"), (int, float)))
            out.append(TokenLogprob(item["token"], float(item["logprob"]), top))
    return out
