"""Request and response shapes of `/api/v1/jobs`, as msgspec Structs with their limits."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct

from control_plane.errors import BadRequest
from control_plane.jobs import tools as tool_rules
from control_plane.routing.schemas import RoutingOptions

ModelId = Annotated[str, Meta(min_length=1, max_length=200, description="Model identifier, e.g. qwen2.5:14b")]
JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]


class MessageIn(Struct, forbid_unknown_fields=False):
    role: Literal["system", "user", "assistant", "tool"]
    #: NUL characters cannot be stored (PostgreSQL jsonb) and no model needs them: refused with 400.
    content: Annotated[str, Meta(max_length=1_000_000, pattern=r"^[^\x00]*$")]
    #: An assistant message: the calls it made, in OpenAI's shape ({"id", "type": "function", "function":
    #: {"name", "arguments"}}).
    tool_calls: Annotated[list[dict[str, Any]], Meta(max_length=128)] | None = None
    #: A tool message: the call it answers.
    tool_call_id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None

    __openapi__: ClassVar[dict] = {"tool_calls": tool_rules.TOOL_CALLS_SCHEMA, "": tool_rules.CALLS_ONLY_FROM_ASSISTANT}


class JobCreate(Struct, forbid_unknown_fields=False):
    """POST /api/v1/jobs body."""

    model: ModelId
    messages: Annotated[list[MessageIn], Meta(min_length=1, max_length=10_000)]
    max_tokens: Annotated[int, Meta(ge=1, le=131_072)] = 512
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] = 0.7
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    stream: bool = False
    node_id: Annotated[str, Meta(pattern=r"^node_[0-9a-f]{1,64}$")] | None = None
    max_wallclock_secs: Annotated[float, Meta(gt=0.0, le=86_400.0)] | None = None
    #: With model "auto": overrides of the key's routing defaults (model_pool, optimize, task).
    routing: RoutingOptions | None = None
    #: Models to use, in order, when `model` has no capacity or its nodes fail before any token.
    fallback_models: Annotated[list[ModelId], Meta(max_length=4)] | None = None
    #: A JSON Schema the output must match; the engine is asked for it and the job returns it as `typed`.
    response_schema: dict[str, Any] | None = None
    #: Gets a signed POST when the job ends (see "Webhooks" in docs/api.md).
    webhook_url: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None
    #: Function tools the model may call (OpenAI's shape); the calls it makes are in result.tool_calls.
    tools: Annotated[list[dict[str, Any]], Meta(max_length=128)] | None = None
    #: "auto", "none", "required" or {"type": "function", "function": {"name": ...}}.
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    __openapi__: ClassVar[dict] = {"tools": tool_rules.TOOLS_SCHEMA, "tool_choice": tool_rules.TOOL_CHOICE_SCHEMA,
                                   "": tool_rules.CHOICE_NEEDS_TOOLS}


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class JobResultView(Struct, omit_defaults=True):
    content: str
    usage: Usage
    #: stop, length or tool_calls.
    finish_reason: str | None = None
    #: The function calls the model made (OpenAI's shape), when it made any.
    tool_calls: list[dict[str, Any]] | None = None
    ttft_ms: float | None = None
    tokens_per_second: float | None = None
    duration_ms: float | None = None


class JobView(Struct, omit_defaults=True):
    """A job as the API shows it; absent fields are omitted, as in the reference."""

    id: str
    status: JobStatus
    model: str
    created_at: str
    node_id: str | None = None
    attempt: int | None = None
    #: How many times the job was offered to a node (accepted or not); `attempt` counts runs only.
    offers: int | None = None
    result: JobResultView | None = None
    error: str | None = None
    error_message: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    latency_ms: int | None = None
    #: Milliseconds from submission until the first token reached a streaming client (streamed jobs only).
    time_to_first_token_ms: int | None = None
    #: Credits the job cost, once it ended (0 when failed or cancelled: the reservation was refunded).
    credits_charged: int | None = None
    #: Jobs with a response_schema: the output parsed and validated against it (null until then, or on failure).
    typed: Any | msgspec.UnsetType = msgspec.UNSET
    #: model "auto": how the model was chosen (task, complexity, confidence, scores of the pool).
    routing: dict[str, Any] | None = None
    #: When a fallback served the job: the model first chosen, and how many fallbacks it took.
    fallback_from: str | None = None
    fallback_depth: int | None = None
    #: Jobs with a webhook_url: the delivery and every attempt (status waiting until the job ends).
    webhook: dict[str, Any] | None = None


class JobList(Struct):
    jobs: list[JobView]


def iso(ts: datetime | None) -> str | None:
    """Render a timestamp as the reference does: 2026-04-30T14:23:41Z."""
    if ts is None:
        return None
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_view(row: dict[str, Any]) -> JobView:
    """Build the API view of a jobs row."""
    result = None
    stored = row.get("result")
    if row["status"] in ("completed", "cancelled") and stored is not None:
        usage = stored.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        result = JobResultView(
            content=stored.get("content", ""),
            usage=Usage(prompt, completion, prompt + completion),
            finish_reason=stored.get("finish_reason"),
            tool_calls=stored.get("tool_calls"),
            ttft_ms=stored.get("ttft_ms"),
            tokens_per_second=stored.get("tokens_per_second"),
            duration_ms=stored.get("duration_ms"),
        )
    latency = None
    if row.get("completed_at") is not None:
        latency = int((row["completed_at"] - row["created_at"]).total_seconds() * 1000)
    ttft = None
    if row.get("first_token_at") is not None:
        ttft = max(int((row["first_token_at"] - row["created_at"]).total_seconds() * 1000), 0)
    return JobView(
        id=row["id"], status=row["status"], model=row["model"], created_at=iso(row["created_at"]),
        node_id=row.get("node_id"), attempt=row.get("attempt") or None, offers=row.get("offers") or None, result=result,
        error=row.get("error"), error_message=row.get("error_message"),
        started_at=iso(row.get("started_at")), completed_at=iso(row.get("completed_at")), latency_ms=latency,
        time_to_first_token_ms=ttft, credits_charged=row.get("credits_charged"), **_gateway_fields(row),
    )


def _gateway_fields(row: dict[str, Any]) -> dict[str, Any]:
    """typed, routing, fallback and webhook of a job, from its request and result (issue 6)."""
    request = row.get("request") or {}
    out: dict[str, Any] = {}
    if "response_schema" in request:
        out["typed"] = (row.get("result") or {}).get("typed") if row["status"] == "completed" else None
    if request.get("routing"):
        out["routing"] = request["routing"]
    fallback = request.get("fallback") or {}
    if fallback.get("depth"):
        out["fallback_from"], out["fallback_depth"] = fallback["from"], fallback["depth"]
    if request.get("webhook_url"):
        delivery = row.get("webhook") or {"status": "waiting"}
        out["webhook"] = {"url": request["webhook_url"], **{k: v for k, v in delivery.items() if v is not None}}
    return out


def request_payload(body: JobCreate) -> dict[str, Any]:
    """What the jobs row keeps of the request to (re)build assignments."""
    payload: dict[str, Any] = {
        "messages": [_message(m, i) for i, m in enumerate(body.messages)],
        "params": {"max_tokens": body.max_tokens, "temperature": body.temperature, "top_p": body.top_p},
        "stream": body.stream,
    }
    names = {c["id"]: c["name"] for m in payload["messages"] for c in m.get("tool_calls") or ()}
    for m in payload["messages"]:
        if m.get("tool_call_id") in names:  # engines like Ollama name a tool result by its function
            m["name"] = names[m["tool_call_id"]]
    tools = tool_rules.normalize_tools(body.tools, None)
    choice = tool_rules.normalize_choice(body.tool_choice, None, tools)
    if tools:
        payload["params"].update({"tools": tools, **({"tool_choice": choice} if choice is not None else {}),
                                  **({"parallel_tool_calls": body.parallel_tool_calls}
                                     if body.parallel_tool_calls is not None else {})})
        if choice != "none":
            payload["needs"] = ["tools"]
    return payload


def _message(m: MessageIn, index: int) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        if m.role != "assistant":
            raise BadRequest(f"messages[{index}]: only assistant messages carry tool_calls", param="messages")
        msg["tool_calls"] = tool_rules.message_calls(m.tool_calls, index)
    if m.role == "tool" and m.tool_call_id:
        msg["tool_call_id"] = m.tool_call_id
    return msg


