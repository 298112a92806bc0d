"""The OpenAI-compatible API over ordinary jobs: each request is a job (listed, billed and retried like any
other); its recorded outcome becomes an OpenAI response, and its token stream OpenAI's chunk format."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import structlog
from litestar import Response
from litestar.response import Stream

from control_plane.accounts.auth import Principal
from control_plane.credits.ledger import credits_used_header
from control_plane.errors import BadRequest, InfernetError, ModelNotFound
from control_plane.jobs.early import UNDECIDED, awaiting_reply, final_row
from control_plane.jobs.schemas import JobCreate, MessageIn
from control_plane.idempotency.service import fingerprint
from control_plane.routing import fallback
from control_plane.routing.schemas import routing_event
from control_plane.jobs.service import JobService
from control_plane.jobs.sweeper import DEADLINE_GRACE_SECS
from control_plane.openai import choices, content, tokens
from control_plane.openai import schemas as oa
from control_plane.jobs import tools as tool_rules
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.streaming import sse
from control_plane.streaming.relay import JobWatch, Slot, TokenRelay
from control_plane.streaming.stream import HEARTBEAT, JobStream, Tokens

log = structlog.get_logger("control_plane.openai")

#: max_tokens when the request names none (the native API's default too).
DEFAULT_MAX_TOKENS = 512
#: Seconds a waiting request allows past the job's deadline: the sweeper's grace to record a timeout, and some.
DEADLINE_GRACE_S = DEADLINE_GRACE_SECS + 5.0
#: HTTP status of a request whose job failed with this error code (others: 502, the node or engine failed).
_FAILURE_STATUS = {"no_capacity": 503, "model_unavailable": 503, "timeout": 504, "cancelled": 409,
                   "not_found": 404, "context_length_exceeded": 400}
_enc = msgspec.json.encode
#: Fields of POST /api/v1/jobs a /v1 request may carry too.
_EXTENSIONS = ("node_id", "max_wallclock_secs", "routing", "fallback_models", "webhook_url")
_PATH = re.compile(r"`\$\.([A-Za-z_]\w*)")


class JobFailed(InfernetError):
    """The job behind a /v1 request ended without a result; code and status come from its error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = _FAILURE_STATUS.get(code, 502)


def _format(body: oa.ChatCompletionRequest) -> str | dict | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return "json"
    if fmt.json_schema is None or not fmt.json_schema.schema:
        raise BadRequest("response_format json_schema needs json_schema.schema", param="response_format")
    return fmt.json_schema.schema


def _features(body: oa.ChatCompletionRequest, params: dict[str, Any]) -> list[str]:
    """Tools, logprobs, penalties and logit_bias into the job's params; returns the capabilities they need."""
    needs = []
    tools = tool_rules.normalize_tools(body.tools, body.functions)
    choice = tool_rules.normalize_choice(body.tool_choice, body.function_call, tools)
    if body.parallel_tool_calls is not None and not tools:
        raise BadRequest("parallel_tool_calls needs tools", param="parallel_tool_calls")
    if tools:
        params.update(tools=tools, tool_choice=choice, parallel_tool_calls=body.parallel_tool_calls)
        if choice != "none":
            needs.append("tools")
    if body.top_logprobs is not None and not body.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    if body.logprobs:
        params.update(logprobs=True, top_logprobs=body.top_logprobs)
        needs.append("logprobs")
    if body.logit_bias:
        if not all(k.isdigit() for k in body.logit_bias):
            raise BadRequest("logit_bias keys must be token ids (digits)", param="logit_bias")
        params["logit_bias"] = body.logit_bias
        needs.append("logit_bias")
    params.update(frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty)
    return needs


def chat_job(body: oa.ChatCompletionRequest, images: dict[str, str] | None = None, *,
             max_image_bytes: int = 512 * 1024) -> tuple[JobCreate, dict[str, Any]]:
    """The job a chat completion request becomes: its JobCreate and the request payload the job row keeps.
    `images`: the http(s) image URLs of the request, fetched (url -> base64)."""
    if body.n not in (None, 1):
        raise BadRequest(f"n={body.n}: a job makes one choice (OpenAIService.chat runs n > 1 as n jobs)", param="n")
    if body.stream_options is not None and not body.stream:
        raise BadRequest("stream_options is only allowed with stream: true", param="stream_options")
    for name in ("audio", "prediction", "reasoning_effort", "web_search_options"):
        if getattr(body, name) is not None:
            raise BadRequest(f"{name} is not supported by the engines of this network", param=name)
    if body.modalities is not None and body.modalities != ["text"]:
        raise BadRequest('modalities: only ["text"] is supported', param="modalities")
    messages = content.job_messages(body.messages, images or {}, max_image_bytes=max_image_bytes)
    max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
    params = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop,
              "seed": body.seed, "format": _format(body)}
    needs = _features(body, params)
    if any(m.get("images") for m in messages):
        needs.append("vision")
    params = {k: v for k, v in params.items() if v is not None or k in ("seed", "format")}
    payload: dict[str, Any] = {"messages": messages, "params": params, "stream": bool(body.stream), "api": "openai"}
    if needs:
        payload["needs"] = sorted(needs)
    if body.user:
        payload["user"] = body.user
    extensions = {name: value for name in _EXTENSIONS if (value := getattr(body, name)) is not None}
    try:  # validated like POST /api/v1/jobs (the sampling parameters live in the payload)
        job = msgspec.convert({"model": body.model, "messages": [{"role": m["role"], "content": m["content"]}
                                                                 for m in messages], "max_tokens": max_tokens,
                               "stream": bool(body.stream), **extensions}, JobCreate)
    except msgspec.ValidationError as exc:
        found = _PATH.search(str(exc))
        raise BadRequest(f"invalid request: {exc}", param=found.group(1) if found else None) from None
    return job, payload


def _logprobs(result: dict[str, Any]) -> oa.ChoiceLogprobs | None:
    stored = result.get("logprobs")
    if stored is None:
        return None
    return oa.ChoiceLogprobs(content=[
        oa.TokenLogprob(t["token"], t["logprob"], [oa.TopLogprob(a["token"], a["logprob"], list(a["token"].encode()))
                                                   for a in t.get("top") or ()], list(t["token"].encode()))
        for t in stored])


def _choice(result: dict[str, Any]) -> oa.Choice:
    """The one choice of a completed job's result: text, tool calls, finish_reason, logprobs."""
    calls = tool_rules.openai_calls(result.get("tool_calls"))
    text = result.get("content") or ""
    message = oa.AssistantMessage(
        text or (None if calls else ""),
        tool_calls=[oa.ToolCallOut(c["id"], oa.FunctionCall(c["function"]["name"], c["function"]["arguments"]))
                    for c in calls] if calls else None)
    return oa.Choice(0, message, result.get("finish_reason") or "stop", _logprobs(result))


def _closing_deltas(result: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The `choices` of the chunks a stream sends after the text, before the finish: the tool calls (whole, one
    delta each, as OpenAI's first delta of a call looks) and the logprobs of the whole answer."""
    out = []
    calls = tool_rules.openai_calls(result.get("tool_calls"))
    if calls:
        out.append([{"index": 0, "delta": {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]},
                     "logprobs": None, "finish_reason": None}])
    logprobs = _logprobs(result)
    if logprobs is not None:
        out.append([{"index": 0, "delta": {}, "logprobs": msgspec.to_builtins(logprobs), "finish_reason": None}])
    return out


def _usage(row: dict[str, Any]) -> oa.CompletionUsage:
    usage = (row.get("result") or {}).get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return oa.CompletionUsage(prompt, completion, prompt + completion)


def _ended(row: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
    """The final row of a completed job, or the JobFailed its error maps to."""
    if row is None:
        raise JobFailed("not_found", f"job {job_id} no longer exists")
    if row["status"] != "completed":
        raise JobFailed(row.get("error") or "internal_error",
                        row.get("error_message") or f"job {job_id} ended {row['status']}")
    return row


def _vector(values: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the openai SDK asks for by default: little-endian float32
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


class _StreamEnd:
    """The cleanup of one streamed completion, run once (when its generator ends, or after the response if
    the client left before it started): the watch and the slot go, and an unfinished job is cancelled."""

    def __init__(self, service: OpenAIService, principal: Principal, slot: Slot, watch: JobWatch, job_id: str) -> None:
        self.service, self.principal, self.slot, self.watch, self.job_id = service, principal, slot, watch, job_id
        self.finished = False
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        relay = self.service._relay
        relay.unwatch(self.watch)
        self.slot.release()
        if not self.finished:  # the client went away: stop the job (and the engine) rather than run it for nobody
            relay.spawn(self.service._abandon(self.principal, self.job_id))


class OpenAIService:
    """Turns /v1 requests into jobs and their outcomes into OpenAI responses."""

    def __init__(self, jobs: JobService, relay: TokenRelay, registry: NodeRegistry, idempotency=None,
                 settings: Settings | None = None) -> None:
        self.idempotency = idempotency  # set by the runtime; control_plane.idempotency.service.Idempotency (Idempotency-Key)
        self._settings = settings or Settings()
        self._jobs = jobs
        self._relay = relay
        self._registry = registry

    # -- chat completions ----------------------------------------------------------------------------
    async def chat(self, principal: Principal, body: oa.ChatCompletionRequest, *,
                   request_id: str | None, idempotency_key: str | None = None,
                   extra_payload: dict[str, Any] | None = None) -> Response[oa.ChatCompletion] | Stream:
        """`extra_payload`: what an API built on chat (Responses) keeps on the job row beside the request."""
        if choices.check(body, idempotency_key) > 1:
            return await choices.complete(self, principal, body, body.n, request_id=request_id)
        job, payload = chat_job(body, await self._fetch_images(body.messages),
                                max_image_bytes=self._settings.max_image_bytes)
        if extra_payload:
            payload.update(extra_payload)
        slot = self._relay.admit(principal.account_id)
        replayed = False
        try:
            def create():
                return self._jobs.submit(principal, job, request_id=request_id, payload=payload)
            if self.idempotency is not None:
                row, replayed = await self.idempotency.submit(
                    principal, idempotency_key, fingerprint("POST /v1/chat/completions", body), create)
            else:
                row = await create()
        except BaseException:
            slot.release()
            raise
        headers = {"X-Job-Id": row["id"], **fallback.headers(row)}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            end = _StreamEnd(self, principal, slot, self._relay.watch(row["id"]), row["id"])
            return sse.sse_response(self._chunks(end, row, include_usage), on_close=end.close, headers=headers)
        try:
            final = await self._wait(row)
        finally:
            slot.release()
        completion = oa.ChatCompletion(
            id=final["id"], created=int(final["created_at"].timestamp()), model=final["model"],
            choices=[_choice(final.get("result") or {})], usage=_usage(final),
        )
        return Response(completion, headers={**headers, **fallback.headers(final), **credits_used_header(final)})

    async def _fetch_images(self, messages: list[Any]) -> dict[str, str]:
        """The request's http(s) image URLs, fetched (url -> base64) under the webhook address rules."""
        urls = content.remote_image_urls(messages)
        if not urls:
            return {}
        s = self._settings
        return await content.fetch_images(urls, allow_private=s.webhook_allow_private, max_bytes=s.max_image_bytes,
                                          timeout=s.image_fetch_timeout_s)

    async def _wait(self, row: dict[str, Any]) -> dict[str, Any]:
        """The job's final row (from its result message when it is provably the job's, see jobs/early.py; else
        as written); JobFailed unless it completed."""
        watch = self._relay.watch(row["id"], tokens=False)
        try:
            budget = row["deadline"].timestamp() - row["created_at"].timestamp() + DEADLINE_GRACE_S
            def early(outcome):  # answer from the result message; the recorder writes the row behind it
                placed = self._jobs.placement_of(row["id"])
                final = final_row(row, placed, outcome)
                if final is not None:
                    self._jobs.answered_early(row["id"])
                elif awaiting_reply(placed, outcome):  # the result overtook the node's "accepted": wait for it
                    placed.on_decided = watch.wake.set
                    return UNDECIDED
                return final
            try:
                final = await self._relay.wait_final(watch, budget, early=early, undecided=UNDECIDED)
            except TimeoutError as exc:
                raise JobFailed("timeout", str(exc)) from None
        finally:
            self._relay.unwatch(watch)
        return _ended(final, row["id"])

    async def _chunks(self, end: _StreamEnd, row: dict[str, Any], include_usage: bool) -> AsyncGenerator[bytes, None]:
        """OpenAI's chunk stream: a role chunk, content chunks, the finish chunk, [usage], [DONE]."""
        job_id = row["id"]
        head = (b'{"id":' + _enc(job_id) + b',"object":"chat.completion.chunk","created":%d,"model":'
                % int(row["created_at"].timestamp()) + _enc(row["model"]) + b',"system_fingerprint":null,"choices":')
        tail = b',"usage":null}' if include_usage else b'}'
        stream = JobStream(self._relay, end.watch, row, heartbeat_s=self._relay.heartbeat_s)
        try:
            routing = routing_event(row)
            # model "auto": the decision rides on the first chunk (every chunk has choices; x-model-used and
            # each chunk's model say which model serves).
            first_tail = tail if routing is None else tail[:-1] + b',"routing":' + _enc(routing) + b'}'
            yield sse.data(head + b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                           b'"finish_reason":null}]' + first_tail)
            async for item in stream.events():
                if item is HEARTBEAT:
                    yield sse.HEARTBEAT
                elif isinstance(item, Tokens):
                    text = "".join([t for _, t in item.items])
                    yield sse.data(head + b'[{"index":0,"delta":{"content":' + _enc(text)
                                   + b'},"logprobs":null,"finish_reason":null}]' + tail)
                else:
                    end.finished = True
                    final = item.row
                    if final["status"] != "completed":
                        error = {"message": final.get("error_message") or f"job {job_id} ended {final['status']}",
                                 "type": "server_error", "code": final.get("error") or "internal_error",
                                 "param": None}
                        yield sse.data(_enc({"error": error}))
                        return
                    result = final.get("result") or {}
                    reason = result.get("finish_reason") or "stop"
                    frames = [sse.data(head + _enc(extra) + tail) for extra in _closing_deltas(result)]
                    frames.append(sse.data(head + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":'
                                           + _enc(reason) + b'}]' + tail))
                    if include_usage:
                        frames.append(sse.data(head + b'[],"usage":' + _enc(_usage(final)) + b'}'))
                    frames.append(b"data: [DONE]\n\n")
                    yield b"".join(frames)
        except InfernetError as exc:  # PostgreSQL or NATS failed under this stream: say so rather than cut it
            log.warning("stream_interrupted", job_id=job_id, error=exc.code, detail=exc.message)
            end.finished = True  # the server ended this stream, not the client: the job runs on (and is billed once)
            said = exc.message if exc.public else "a service this stream needs is unreachable right now"
            error = {"message": f"{said}; job {job_id} was not cancelled: its result will be at "
                                f"GET /api/v1/jobs/{job_id}", "type": "server_error", "code": exc.code, "param": None}
            yield sse.data(_enc({"error": error}))
        finally:
            end.close()

    async def _abandon(self, principal: Principal, job_id: str) -> None:
        try:
            await self._jobs.cancel(principal, job_id)
        except InfernetError as exc:  # already ended, or the store is down (the deadline stops it then)
            log.info("abandoned_stream_not_cancelled", job_id=job_id, error=exc.code, detail=exc.message)
            return
        log.info("abandoned_stream_cancelled", job_id=job_id, detail="the client closed a streamed /v1 completion")

    # -- embeddings ----------------------------------------------------------------------------------
    async def embeddings(self, principal: Principal, body: oa.EmbeddingRequest, *,
                         request_id: str | None) -> Response[oa.EmbeddingList]:
        inputs = tokens.texts(body.input)
        if any(not text for text in inputs):
            raise BadRequest("input must not contain empty strings", param="input")
        if body.dimensions is not None and not 1 <= body.dimensions <= 65_536:
            raise BadRequest("dimensions must be between 1 and 65536", param="dimensions")
        job = JobCreate(model=body.model, messages=[MessageIn(role="user", content=t) for t in inputs], max_tokens=1)
        payload: dict[str, Any] = {"inputs": inputs, "stream": False, "api": "openai"}
        if body.dimensions is not None:  # passed to the engine (Ollama and OpenAI-compatible servers take it)
            payload["params"] = {"dimensions": body.dimensions}
        if body.user:
            payload["user"] = body.user
        slot = self._relay.admit(principal.account_id)
        try:
            row = await self._jobs.submit(principal, job, request_id=request_id, payload=payload, kind="embed")
            final = await self._wait(row)
        finally:
            slot.release()
        result = final.get("result") or {}
        vectors = result.get("embeddings") or []
        prompt = int((result.get("usage") or {}).get("prompt_tokens") or 0)
        return Response(oa.EmbeddingList(
            data=[oa.Embedding(i, _vector(v, body.encoding_format)) for i, v in enumerate(vectors)],
            model=final["model"], usage=oa.EmbeddingUsage(prompt, prompt),
        ), headers={"X-Job-Id": final["id"], **credits_used_header(final)})

    # -- models --------------------------------------------------------------------------------------
    def models(self) -> oa.ModelList:
        """Models that at least one online node serves now."""
        return oa.ModelList(data=[oa.Model(id=m.name) for m in self._registry.models_summary()])

    def model(self, model_id: str) -> oa.Model:
        if not any(m.name == model_id for m in self._registry.models_summary()):
            raise ModelNotFound(f"Model {model_id} is not served by any online node")
        return oa.Model(id=model_id)
