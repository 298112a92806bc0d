"""Ollama's HTTP API on the control plane, so any Ollama client uses the whole network with one URL change (and
`Authorization: Bearer inf_...`): /api/chat and /api/generate (NDJSON streamed or not), /api/embed (and the
older /api/embeddings), /api/tags, /api/ps, /api/show, /api/version. Each generation is an ordinary job."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream
from msgspec import Meta, Struct

from control_plane.accounts.auth import Principal
from control_plane.errors import ModelNotFound
from control_plane.jobs import tools as tool_rules
from control_plane.jobs.schemas import ModelId
from control_plane.jobs.service import JobService
from control_plane.ollama_api import translate as tr
from control_plane.openai import reshape
from control_plane.openai import schemas as oa
from control_plane.openai.service import OpenAIService
from control_plane.scheduler.registry import NodeRegistry

_enc = msgspec.json.encode
_NDJSON = "application/x-ndjson"


#: `format`: "json", or a JSON Schema (an object with something in it); "" or null for none.
_FORMAT = {"anyOf": [{"enum": ["json", ""]}, {"type": "object", "minProperties": 1}, {"type": "null"}]}
#: `think`: no engine here thinks, so only its off values are taken.
_NO_THINK = {"anyOf": [{"const": False}, {"const": ""}, {"type": "null"}]}
#: A text to embed (empty ones are refused).
_Text = Annotated[str, Meta(min_length=1)]
#: An Ollama chat message as the handler reads it (other fields are ignored).
_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"type": ["string", "null"]},
    "images": {"type": ["array", "null"], "items": {"type": "string"}}},
    "anyOf": [{"properties": {"role": {"const": "user"}}},  # images: user messages only
              {"properties": {"images": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}}}]}


class ChatBody(Struct, forbid_unknown_fields=False):
    """POST /api/chat (Ollama's shape)."""

    model: ModelId
    messages: Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=10_000)]
    tools: Annotated[list[dict[str, Any]], Meta(max_length=128)] | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: str | float | None = None
    think: bool | str | None = None

    __openapi__: ClassVar[dict] = {"messages": {"type": "array", "minItems": 1, "maxItems": 10_000, "items": _MESSAGE},
                                   "think": _NO_THINK, "format": _FORMAT, "tools": tool_rules.TOOLS_SCHEMA}


class GenerateBody(Struct, forbid_unknown_fields=False):
    """POST /api/generate (Ollama's shape); an empty prompt only checks the model is there."""

    model: ModelId
    prompt: Annotated[str, Meta(max_length=1_000_000)] = ""
    system: Annotated[str, Meta(max_length=1_000_000)] | None = None
    images: Annotated[list[str], Meta(max_length=16)] | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    raw: bool | None = None
    suffix: str | None = None
    context: list[int] | None = None
    template: str | None = None
    keep_alive: str | float | None = None
    think: bool | str | None = None

    #: What the handler refuses beyond the types: raw prompts, suffix, context, template, thinking.
    __openapi__: ClassVar[dict] = {
        "raw": {"anyOf": [{"const": False}, {"type": "null"}]},
        "suffix": {"anyOf": [{"const": ""}, {"type": "null"}]},
        "context": {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]},
        "template": {"anyOf": [{"const": ""}, {"type": "null"}]},
        "think": _NO_THINK, "format": _FORMAT}


class EmbedBody(Struct, forbid_unknown_fields=False):
    """POST /api/embed (Ollama's shape)."""

    model: ModelId
    input: _Text | Annotated[list[_Text], Meta(min_length=1, max_length=2048)]
    truncate: bool | None = None
    dimensions: oa.Dimensions | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None


class EmbeddingsBody(Struct, forbid_unknown_fields=False):
    """POST /api/embeddings (Ollama's older single-prompt shape)."""

    model: ModelId
    prompt: Annotated[str, Meta(min_length=1, max_length=1_000_000)]


class ShowBody(Struct, forbid_unknown_fields=False):
    """POST /api/show: `model` (older clients send `name`)."""

    model: Annotated[str, Meta(max_length=200)] | None = None
    name: Annotated[str, Meta(max_length=200)] | None = None


def _final(model: str, created: str, done_reason: str, counters: dict[str, Any], key: str, empty: Any) -> dict:
    return {"model": model, "created_at": created, key: empty, "done": True, "done_reason": done_reason, **counters}


async def _ndjson(stream: Stream, jobs: JobService, principal: Principal, started: int, key: str) -> AsyncGenerator[bytes, None]:
    """The chat chunk stream as Ollama's NDJSON lines: `message` (chat) or `response` (generate) pieces, then
    the done line with the counters."""
    model, reason, usage = "", "stop", None
    job_id = stream.headers.get("X-Job-Id")
    async for item in reshape.frames(stream.iterator):
        if item is None:
            continue  # NDJSON has no comments; the connection stays open without them
        if item is reshape.DONE:
            row = await jobs.get(principal, job_id) if job_id else {}
            counters = tr.timings(usage, row.get("result"), time.monotonic_ns() - started)
            empty = {"role": "assistant", "content": ""} if key == "message" else ""
            yield _enc(_final(model, tr.now(), "length" if reason == "length" else "stop", counters, key, empty)) + b"\n"
            return
        if "error" in item:
            yield _enc({"error": (item["error"] or {}).get("message") or "the job failed"}) + b"\n"
            return
        model = item.get("model") or model
        if not item.get("choices"):
            usage = item.get("usage") or usage
            continue
        choice = item["choices"][0]
        delta = choice.get("delta") or {}
        reason = choice.get("finish_reason") or reason
        text, calls = delta.get("content") or "", tr.ollama_calls(delta.get("tool_calls"))
        if not text and not calls:
            continue
        if key == "message":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            yield _enc({"model": model, "created_at": tr.now(), "message": message, "done": False}) + b"\n"
        else:
            yield _enc({"model": model, "created_at": tr.now(), "response": text, "done": False}) + b"\n"


class OllamaController(Controller):
    path = "/api"
    tags = ["ollama"]

    async def _run(self, request: Request, chat: oa.ChatCompletionRequest, key: str, principal: Principal,
                   openai_api: OpenAIService, jobs: JobService) -> Response | Stream:
        started = time.monotonic_ns()
        answer = await openai_api.chat(principal, chat, request_id=request.scope.get("request_id"))
        if isinstance(answer, Stream):
            return reshape.restream(answer, _ndjson(answer, jobs, principal, started, key), media_type=_NDJSON)
        completion = answer.content
        choice = completion.choices[0]
        row = await jobs.get(principal, completion.id)
        counters = tr.timings(msgspec.to_builtins(completion.usage), row.get("result"), time.monotonic_ns() - started)
        reason = "length" if choice.finish_reason == "length" else "stop"
        if key == "message":
            message: dict[str, Any] = {"role": "assistant", "content": choice.message.content or ""}
            if choice.message.tool_calls:
                message["tool_calls"] = tr.ollama_calls(msgspec.to_builtins(choice.message.tool_calls))
            body = _final(completion.model, tr.now(), reason, counters, "message", message)
        else:
            body = _final(completion.model, tr.now(), reason, counters, "response", choice.message.content or "")
        return Response(body, headers=dict(answer.headers))

    @post("/chat", status_code=200, summary="Chat (Ollama's API); NDJSON lines when stream is true (the default)")
    async def chat(self, request: Request, data: JSONBody[ChatBody], principal: NamedDependency[Principal],
                   openai_api: NamedDependency[OpenAIService], jobs: NamedDependency[JobService]) -> Response | Stream:
        return await self._run(request, tr.chat_request(msgspec.to_builtins(data)), "message", principal, openai_api,
                               jobs)

    @post("/generate", status_code=200, summary="Generate (Ollama's API); NDJSON lines when stream is true")
    async def generate(self, request: Request, data: JSONBody[GenerateBody], principal: NamedDependency[Principal],
                       openai_api: NamedDependency[OpenAIService], jobs: NamedDependency[JobService],
                       registry: NamedDependency[NodeRegistry]) -> Response | Stream:
        if not data.prompt and not data.images:  # Ollama: load the model and say so
            if registry.model_info(data.model) is None:
                raise ModelNotFound(f"model '{data.model}' not found")
            return Response({"model": data.model, "created_at": tr.now(), "response": "", "done": True,
                             "done_reason": "load"})
        return await self._run(request, tr.generate_request(msgspec.to_builtins(data)), "response", principal,
                               openai_api, jobs)

    @post("/embed", status_code=200, summary="Embed (Ollama's API)")
    async def embed(self, request: Request, data: JSONBody[EmbedBody], principal: NamedDependency[Principal],
                    openai_api: NamedDependency[OpenAIService]) -> dict[str, Any]:
        started = time.monotonic_ns()
        answer = await openai_api.embeddings(principal, oa.EmbeddingRequest(
            model=data.model, input=data.input, dimensions=data.dimensions), request_id=request.scope.get("request_id"))
        result = answer.content
        return {"model": result.model, "embeddings": [e.embedding for e in result.data],
                "total_duration": time.monotonic_ns() - started, "load_duration": 0,
                "prompt_eval_count": result.usage.prompt_tokens}

    @post("/embeddings", status_code=200, summary="Embed one prompt (Ollama's older API)")
    async def embeddings(self, request: Request, data: JSONBody[EmbeddingsBody], principal: NamedDependency[Principal],
                         openai_api: NamedDependency[OpenAIService]) -> dict[str, Any]:
        answer = await openai_api.embeddings(principal, oa.EmbeddingRequest(model=data.model, input=data.prompt),
                                             request_id=request.scope.get("request_id"))
        return {"embedding": answer.content.data[0].embedding}

    @get("/tags", summary="Models the network serves (Ollama's API)")
    async def list_tags(self, principal: NamedDependency[Principal], registry: NamedDependency[NodeRegistry]) -> dict[str, Any]:
        models = []
        for summary in registry.models_summary():
            info = registry.model_info(summary.name)
            models.append({"name": summary.name, "model": summary.name, "modified_at": tr.now(),
                           "size": (info.size_bytes if info else None) or 0, "digest": tr.digest(summary.name),
                           "details": tr.details(info)})
        return {"models": models}

    @get("/ps", summary="Models some node has loaded now (Ollama's API)")
    async def ps(self, principal: NamedDependency[Principal], registry: NamedDependency[NodeRegistry]) -> dict[str, Any]:
        expires = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        models = []
        for summary in registry.models_summary():
            info = registry.model_info(summary.name)
            if info is not None and info.loaded:
                size = info.size_bytes or 0
                models.append({"name": summary.name, "model": summary.name, "size": size,
                               "digest": tr.digest(summary.name), "details": tr.details(info), "expires_at": expires,
                               "size_vram": size, "context_length": info.context_length or 0})
        return {"models": models}

    @post("/show", status_code=200, summary="A model's details and capabilities (Ollama's API)")
    async def show(self, data: JSONBody[ShowBody], principal: NamedDependency[Principal],
                   registry: NamedDependency[NodeRegistry]) -> dict[str, Any]:
        name = data.model or data.name or ""
        info = registry.model_info(name)
        if info is None:
            raise ModelNotFound(f"model '{name}' not found")
        model_info: dict[str, Any] = {"general.architecture": "infernet"}
        if info.context_length:
            model_info["infernet.context_length"] = info.context_length
        return {"license": "", "modelfile": f"# served by the Infernet network\nFROM {name}\n", "parameters": "",
                "template": "", "details": tr.details(info), "model_info": model_info,
                "capabilities": tr.capabilities(registry.capabilities_of(name)), "modified_at": tr.now()}

    @get("/version", summary="The Ollama API level this control plane speaks")
    async def version(self, principal: NamedDependency[Principal]) -> dict[str, str]:
        return {"version": tr.API_VERSION}
