"""The Ollama engine: chat over a light persistent HTTP client (`http1`), the rest over the `ollama` AsyncClient.

Error mapping (driver error -> EngineError, chained)::

    httpx.TransportError, ConnectionError,
    TimeoutError (chat)                        -> EngineUnavailable   refused, reset, timed out
    status 503 / 429                           -> EngineBusy          Ollama's queue is full
    status 404                                 -> ModelUnavailable    model "x" not found
    {"error"} line mid-stream                  -> GenerationFailed    produced_tokens says if text went out
    other status, RequestError,
    malformed response (ValueError)            -> GenerationFailed

A model's capabilities come from /api/show (`capabilities`: completion, tools, vision, embedding), asked
once per model digest. When /api/show says nothing (older Ollama), a model is embedding-capable when its
family (or one of its families) contains "bert" or "embed", or its name contains "embed"
(nomic-embed-text, mxbai-embed-large, all-minilm, bge-m3 ...), and chat-capable otherwise.
Context length is known only for loaded models (from /api/ps); None otherwise.
Tools, images and tool results are translated by `ollama_wire`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import msgspec
import ollama

from node_agent.engines import ollama_wire
from node_agent.engines.base import (
    Completion,
    Delta,
    EngineError,
    EngineHealth,
    EngineModel,
    GenerationFailed,
    status_error,
    unreachable,
)
from node_agent.engines.http1 import HttpClient
from protocol import ChatMessage, GenerationParams

__all__ = ["DEFAULT_URL", "OllamaEngine", "is_embedding_model"]

DEFAULT_URL = "http://127.0.0.1:11434"
#: Seconds to wait for /api/show while listing models; past it the model's capabilities are guessed this time.
_SHOW_TIMEOUT_S = 2.0
#: How long a finished chat waits for the rest of its HTTP body (a few bytes, normally sent with the last line).
_DRAIN_S = 1.0
#: Everything the client library can raise for a failed call; mapped by `_engine_error`.
_DRIVER_ERRORS = (ollama.ResponseError, ollama.RequestError, httpx.TransportError, ConnectionError, ValueError)


def is_embedding_model(name: str, family: str | None = None, families: Sequence[str] | None = None) -> bool:
    """The rule this engine uses to flag embedding models (see the module docstring)."""
    kinds = [family or "", *(families or ())]
    return "embed" in name.lower() or any("bert" in k.lower() or "embed" in k.lower() for k in kinds)


def _engine_error(exc: BaseException, *, produced_tokens: bool = False) -> EngineError:
    """The most specific EngineError for a driver error."""
    if isinstance(exc, ollama.ResponseError):
        return status_error(exc.status_code, f"ollama: {exc.error}", produced_tokens=produced_tokens)
    if isinstance(exc, (httpx.TransportError, ConnectionError)):
        return _transport_error(exc, produced_tokens=produced_tokens)
    return GenerationFailed(f"ollama: bad request or response: {exc}", produced_tokens=produced_tokens)


class _Message(msgspec.Struct):
    content: str = ""
    tool_calls: list[Any] | None = None


class _ChatPart(msgspec.Struct):
    """One NDJSON line of /api/chat (the fields the engine reads; others are ignored)."""

    message: _Message | None = None
    done: bool = False
    done_reason: str | None = None
    error: str | None = None
    logprobs: list[Any] | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


_decode_part = msgspec.json.Decoder(_ChatPart).decode
_encode = msgspec.json.Encoder().encode


class _ErrorBody(msgspec.Struct):
    error: str = ""


def _http_url(url: str) -> str:
    """OLLAMA_HOST may omit the scheme ("127.0.0.1:11434"), as the ollama CLI accepts."""
    return url if "://" in url else f"http://{url}"


def _transport_error(exc: BaseException, *, produced_tokens: bool = False) -> EngineError:
    return unreachable("ollama", exc, produced_tokens=produced_tokens)


def _status_error(status: int, body: bytes) -> EngineError:
    """The EngineError for a refused request, from its status and Ollama's {"error": ...} body."""
    try:
        text = msgspec.json.decode(body, type=_ErrorBody).error
    except msgspec.DecodeError:
        text = body[:200].decode(errors="replace")
    return status_error(status, f"ollama: {text or f'status {status}'}")


def _part_completion(final: _ChatPart, calls: list) -> Completion:
    extra = {
        k: v
        for k in ("done_reason", "total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
        if (v := getattr(final, k)) is not None
    }
    return Completion(
        finish_reason="length" if final.done_reason == "length" else "stop",
        prompt_tokens=final.prompt_eval_count,
        completion_tokens=final.eval_count,
        eval_seconds=final.eval_duration / 1e9 if final.eval_duration else None,
        extra=extra,
        tool_calls=calls,
    )


def _model(name: str, size: int | None, details: Any, ps: Any, shown: tuple[str, ...] | None, *,
           logprobs: bool = False) -> EngineModel:
    """One EngineModel from an /api/tags entry, its /api/ps entry when loaded, and what /api/show reported."""
    guessed = is_embedding_model(name, getattr(details, "family", None), getattr(details, "families", None))
    capabilities = ollama_wire.capabilities(shown, embeddings=guessed)
    if logprobs and "chat" in capabilities:
        capabilities = tuple(sorted((*capabilities, "logprobs")))
    return EngineModel(
        name=name,
        loaded=ps is not None,
        size_bytes=int(size) if size is not None else None,
        context_length=ps.context_length if ps is not None else None,
        embeddings="embeddings" in capabilities,
        capabilities=capabilities,
    )


class OllamaEngine:
    """Talks to one Ollama server; chat streams NDJSON and closes the HTTP stream when abandoned."""

    name = "ollama"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        keep_alive: float | str | None = None,
        timeout: float | None = None,
        connect_timeout: float = 5.0,
        health_timeout: float = 5.0,
    ) -> None:
        """`keep_alive` is passed to Ollama with every request when set; `timeout` bounds each read (None: none)."""
        self.url = url.rstrip("/")
        self.keep_alive = keep_alive
        self._client = ollama.AsyncClient(host=self.url, timeout=httpx.Timeout(timeout, connect=connect_timeout))
        self._timeout = timeout
        self._http = HttpClient(_http_url(self.url), connect_timeout=connect_timeout)
        # The ollama client has no version call; a small separate client serves the health probe.
        self._probe = httpx.AsyncClient(base_url=self.url, timeout=health_timeout)
        #: (model, digest) -> the capabilities /api/show reported (None: it reported none).
        self._shown: dict[tuple[str, str], tuple[str, ...] | None] = {}
        #: The version /api/version last reported ('' unknown): logprobs need 0.12.11 or later.
        self._version = ""

    async def health(self) -> EngineHealth:
        try:
            response = await self._probe.get("/api/version")
            response.raise_for_status()
            version = response.json().get("version")
            self._version = version if isinstance(version, str) else ""
        except httpx.HTTPStatusError as exc:
            return EngineHealth(ok=False, detail=f"ollama /api/version answered {exc.response.status_code}")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            return EngineHealth(ok=False, detail=f"ollama unreachable: {str(exc) or type(exc).__name__}")
        return EngineHealth(ok=True, version=version if isinstance(version, str) else None)

    async def list_models(self) -> Sequence[EngineModel]:
        try:
            tags, running = await asyncio.gather(self._client.list(), self._client.ps())
        except _DRIVER_ERRORS as exc:
            raise _engine_error(exc) from exc
        loaded = {m.model or m.name: m for m in running.models if m.model or m.name}
        entries = [(tag.model, tag.size, tag.details, tag.digest) for tag in tags.models if tag.model]
        # Running but not listed (rare): still servable.
        listed = {name for name, *_ in entries}
        entries += [(name, ps.size, ps.details, ps.digest) for name, ps in loaded.items() if name not in listed]
        shown = await asyncio.gather(*(self._capabilities(name, digest or "") for name, _, _, digest in entries))
        logprobs = ollama_wire.has_logprobs(self._version)
        return [_model(name, size, details or (loaded.get(name) and loaded[name].details), loaded.get(name), caps,
                       logprobs=logprobs)
                for (name, size, details, _), caps in zip(entries, shown)]

    async def _capabilities(self, model: str, digest: str) -> tuple[str, ...] | None:
        """/api/show's capabilities for a model, asked once per digest; None when Ollama does not say."""
        key = (model, digest)
        if key in self._shown:
            return self._shown[key]
        try:
            # Bounded: a slow /api/show must not hold up the listing (and so the advertisement).
            async with asyncio.timeout(_SHOW_TIMEOUT_S):  # not wait_for, which can swallow a cancellation on 3.11
                shown = await self._client.show(model)
        except (*_DRIVER_ERRORS, TimeoutError):
            return None  # asked again next time
        reported = getattr(shown, "capabilities", None)
        caps = tuple(reported) if isinstance(reported, (list, tuple)) else None
        if digest:
            self._shown[key] = caps
        return caps

    async def chat(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta | Completion]:
        """Deltas for each non-empty content piece, then one Completion (with the tool calls the model made);
        the HTTP stream closes on exit.

        The hot path of every job: one POST on a kept-alive connection (`http1`), NDJSON lines decoded
        straight into a msgspec Struct, no per-line model objects."""
        body: dict[str, Any] = {"model": model, "messages": ollama_wire.messages(messages), "stream": True,
                                "options": ollama_wire.options(params)}
        if (tools := ollama_wire.tools(params)) is not None:
            body["tools"] = tools
        if params.logprobs:
            body["logprobs"] = True
            if params.top_logprobs is not None:
                body["top_logprobs"] = params.top_logprobs
        if params.format is not None:
            body["format"] = params.format
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        produced = False
        calls: list = []
        logprobs: list | None = [] if params.logprobs else None
        try:
            response = await self._http.request("POST", "/api/chat", _encode(body), timeout=self._timeout)
        except (ConnectionError, TimeoutError) as exc:
            raise _transport_error(exc) from exc
        try:
            if response.status != 200:
                raise _status_error(response.status, await response.read(self._timeout))
            async for line in response.lines(self._timeout):
                if not line.strip():
                    continue
                try:
                    part = _decode_part(line)
                except msgspec.DecodeError as exc:
                    raise GenerationFailed(f"ollama: bad response line: {exc}", produced_tokens=produced) from exc
                if part.error is not None:
                    raise GenerationFailed(f"ollama: {part.error}", produced_tokens=produced)
                message = part.message
                if message is not None:
                    if message.content:
                        produced = True
                        yield Delta(message.content)
                    if message.tool_calls:
                        calls.extend(ollama_wire.tool_calls(message.tool_calls))
                if logprobs is not None and part.logprobs:
                    logprobs.extend(ollama_wire.logprobs(part.logprobs))
                if part.done:
                    completion = _part_completion(part, calls)
                    completion.logprobs = logprobs
                    yield completion
                    # The body's end follows the last line at once: read it, so the connection is kept for the
                    # next job (a new connection per job costs the node and the engine more than the job's tokens).
                    await response.drain(_DRAIN_S)
                    return
            raise GenerationFailed("ollama: stream ended without a final message", produced_tokens=produced)
        except (ConnectionError, TimeoutError) as exc:
            raise _transport_error(exc, produced_tokens=produced) from exc
        finally:
            response.close()  # a stream left early closes its connection: Ollama sees the disconnect and stops

    async def embed(self, model: str, inputs: Sequence[str], *,
                    dimensions: int | None = None) -> tuple[list[list[float]], int | None]:
        if not inputs:
            return [], 0
        try:
            response = await self._client.embed(model=model, input=list(inputs), keep_alive=self.keep_alive,
                                                dimensions=dimensions)
        except _DRIVER_ERRORS as exc:
            raise _engine_error(exc) from exc
        vectors = [list(v) for v in response.embeddings]
        if len(vectors) != len(inputs):
            raise GenerationFailed(f"ollama returned {len(vectors)} embeddings for {len(inputs)} inputs")
        return vectors, response.prompt_eval_count

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._client.close()
        await self._probe.aclose()

