"""OpenAI's Responses API, the subset agents and chat apps use: `POST /v1/responses` (input text or items,
instructions, previous_response_id, function tools and call items, text.format, streaming with the Responses
event types) and `GET /v1/responses/{id}`. A response is a chat-completion job underneath: its id is the job id,
and the job row keeps what a later `previous_response_id` or GET needs."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream
from msgspec import Meta, Struct

from control_plane.accounts.auth import Principal
from control_plane.errors import BadRequest, NotFound
from control_plane.jobs.service import JobService
from control_plane.jobs import tools as tool_rules
from control_plane.jobs.tools import openai_calls
from control_plane.openai import reshape
from control_plane.openai import schemas as oa
from control_plane.openai.service import OpenAIService
from control_plane.jobs.schemas import ModelId

_enc = msgspec.json.encode
_STATUS = {"pending": "queued", "processing": "in_progress", "completed": "completed", "failed": "failed",
           "cancelled": "cancelled"}


class ResponseRequest(Struct, forbid_unknown_fields=False):
    """POST /v1/responses body."""

    model: ModelId
    #: A string (one user message) or a list of items: messages ({role, content}), function_call and
    #: function_call_output items.
    input: str | Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=10_000)]
    instructions: Annotated[str, Meta(max_length=1_000_000)] | None = None
    previous_response_id: Annotated[str, Meta(max_length=64)] | None = None
    #: Function tools: {"type": "function", "name", "description", "parameters", "strict"}.
    tools: Annotated[list[dict[str, Any]], Meta(max_length=128)] | None = None
    #: "auto", "none", "required" or {"type": "function", "name": ...}.
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    #: {"format": {"type": "text" | "json_object" | "json_schema", "name", "schema", "strict"}}.
    text: dict[str, Any] | None = None
    max_output_tokens: Annotated[int, Meta(ge=1, le=131_072)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    stream: bool | None = None
    #: false: the response cannot be retrieved or continued later (the job itself is still listed and billed).
    store: bool = True
    metadata: dict[str, str] | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["disabled"] | None = None

    __openapi__: ClassVar[dict] = {"tools": tool_rules.FLAT_TOOLS_SCHEMA, "": {"anyOf": [  # parallel_tool_calls needs tools
        {"properties": {"parallel_tool_calls": {"type": "null"}}},  # absent or null
        {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}]}}


# -- request -> chat ---------------------------------------------------------------------------------------------
def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise BadRequest(f"tools[{i}] is of type {tool.get('type')!r}; only function tools are supported",
                             param="tools")
        out.append({"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters", "strict")
                                                     if tool.get(k) is not None}})
    return out


def _choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise BadRequest("text.format must be an object", param="text")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name") or "response", "schema": fmt.get("schema"),
                                                       "strict": fmt.get("strict")}}
    raise BadRequest(f"text.format.type {fmt.get('type')!r} is not supported", param="text")


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input as chat messages: message items, function calls (merged into one assistant message per
    run of calls) and their outputs (tool messages)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise BadRequest(f"input[{i}].role must be user, system, developer or assistant", param="input")
            out.append({"role": role, "content": item.get("content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") is not None:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": item.get("call_id"),
                        "content": output if isinstance(output, str) else _enc(output).decode()})
        elif kind == "reasoning":
            continue  # a reasoning summary of an earlier turn: nothing an engine here takes back
        else:
            raise BadRequest(f"input[{i}] is a {kind!r} item; message, function_call and function_call_output "
                             "items are supported", param="input")
    return out


def _history(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation of a stored response as chat messages: its input (without its instructions) and output."""
    request = row.get("request") or {}
    meta = request.get("response") or {}
    messages = list(request.get("messages") or ())
    if meta.get("instructions") is not None and messages and messages[0]["role"] == "system":
        messages = messages[1:]
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("images"):
            msg["content"] = [{"type": "text", "text": m["content"]}] + [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}} for b64 in m["images"]]
        if m.get("tool_calls"):
            msg["tool_calls"] = [{"id": c["id"], "type": "function",
                                  "function": {"name": c["name"], "arguments": c["arguments"]}} for c in m["tool_calls"]]
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    result = row.get("result") or {}
    calls = openai_calls(result.get("tool_calls"))
    out.append({"role": "assistant", "content": result.get("content") or None, **({"tool_calls": calls} if calls else {})})
    return out


# -- job -> response object ----------------------------------------------------------------------------------------
def _message_item(job_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": "msg_" + job_id.removeprefix("job_"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _call_item(call: dict[str, Any], status: str = "completed", arguments: str | None = None) -> dict[str, Any]:
    return {"type": "function_call", "id": "fc_" + call["id"].removeprefix("call_"), "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"] if arguments is None else arguments, "status": status}


def response_object(row: dict[str, Any], meta: dict[str, Any], *, status: str | None = None,
                    output: list[dict[str, Any]] | None = None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Response object for a job row (GET, and the final events of a stream)."""
    result = row.get("result") or {}
    finish = result.get("finish_reason")
    if status is None:
        status = _STATUS.get(row["status"], "in_progress")
        if status == "completed" and finish == "length":
            status = "incomplete"
    if output is None:
        output = []
        if row["status"] == "completed":
            if result.get("content") or not result.get("tool_calls"):
                output.append(_message_item(row["id"], result.get("content") or ""))
            output += [_call_item(c) for c in openai_calls(result.get("tool_calls")) or ()]
    if usage is None and row["status"] == "completed":
        u = result.get("usage") or {}
        usage = {"prompt_tokens": int(u.get("prompt_tokens") or 0), "completion_tokens": int(u.get("completion_tokens") or 0)}
    error = None
    if row["status"] in ("failed", "cancelled"):
        error = {"code": row.get("error") or row["status"], "message": row.get("error_message") or row["status"]}
    text = "".join(p["text"] for item in output if item["type"] == "message" for p in item["content"])
    return {
        "id": row["id"], "object": "response", "created_at": int(row["created_at"].timestamp()), "status": status,
        "model": row["model"], "output": output, "output_text": text, "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": meta.get("instructions"), "previous_response_id": meta.get("previous_response_id"),
        "tools": meta.get("tools") or [], "tool_choice": meta.get("tool_choice") or "auto",
        "parallel_tool_calls": meta.get("parallel_tool_calls", True), "text": meta.get("text") or {"format": {"type": "text"}},
        "temperature": meta.get("temperature"), "top_p": meta.get("top_p"),
        "max_output_tokens": meta.get("max_output_tokens"), "metadata": meta.get("metadata") or {},
        "store": meta.get("store", True), "truncation": "disabled", "user": meta.get("user"),
        "usage": None if usage is None else {
            "input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
    }


# -- streaming -----------------------------------------------------------------------------------------------------
class _Events:
    """Turns the chat chunk stream of one job into the Responses stream events, numbered in order."""

    def __init__(self, row: dict[str, Any], meta: dict[str, Any]) -> None:
        self.row, self.meta, self.seq = row, meta, 0
        self.text: list[str] = []
        self.message_open = False
        self.output: list[dict[str, Any]] = []
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.msg_id = "msg_" + row["id"].removeprefix("job_")

    def event(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _enc({"type": kind, "sequence_number": self.seq - 1,
                                                                 **fields}) + b"\n\n"

    def snapshot(self, status: str) -> dict[str, Any]:
        return response_object(self.row, self.meta, status=status, output=list(self.output), usage=self.usage)

    def start(self) -> list[bytes]:
        return [self.event("response.created", response=self.snapshot("in_progress")),
                self.event("response.in_progress", response=self.snapshot("in_progress"))]

    def open_message(self) -> list[bytes]:
        self.message_open = True
        item = {**_message_item(self.row["id"], "", "in_progress"), "content": []}
        return [self.event("response.output_item.added", output_index=len(self.output), item=item),
                self.event("response.content_part.added", item_id=self.msg_id, output_index=len(self.output),
                           content_index=0, part={"type": "output_text", "text": "", "annotations": []})]

    def close_message(self) -> list[bytes]:
        text = "".join(self.text)
        item = _message_item(self.row["id"], text)
        index = len(self.output)
        self.output.append(item)
        self.message_open = False
        return [self.event("response.output_text.done", item_id=self.msg_id, output_index=index, content_index=0,
                           text=text, logprobs=[]),
                self.event("response.content_part.done", item_id=self.msg_id, output_index=index, content_index=0,
                           part=item["content"][0]),
                self.event("response.output_item.done", output_index=index, item=item)]

    def text_delta(self, delta: str) -> list[bytes]:
        out = [] if self.message_open else self.open_message()
        self.text.append(delta)
        return out + [self.event("response.output_text.delta", item_id=self.msg_id, output_index=len(self.output),
                                 content_index=0, delta=delta, logprobs=[])]

    def calls(self, calls: list[dict[str, Any]]) -> list[bytes]:
        out = self.close_message() if self.message_open else []
        for call in calls:
            call = {"id": call["id"], "function": call["function"]}
            index = len(self.output)
            item = _call_item(call)
            out += [self.event("response.output_item.added", output_index=index,
                               item=_call_item(call, "in_progress", "")),
                    self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                               delta=item["arguments"]),
                    self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                               name=item["name"], arguments=item["arguments"]),
                    self.event("response.output_item.done", output_index=index, item=item)]
            self.output.append(item)
        return out

    def end(self) -> list[bytes]:
        out = []
        if self.message_open or not self.output:  # an empty answer still has its (empty) message
            if not self.message_open:
                out += self.open_message()
            out += self.close_message()
        if self.finish == "length":
            return out + [self.event("response.incomplete", response=self.snapshot("incomplete"))]
        return out + [self.event("response.completed", response=self.snapshot("completed"))]

    def failed(self, error: dict[str, Any]) -> list[bytes]:
        snapshot = self.snapshot("failed")
        snapshot["error"] = {"code": error.get("code") or "server_error", "message": error.get("message") or ""}
        return [self.event("response.failed", response=snapshot)]


async def _events(stream: Stream, events: _Events) -> AsyncGenerator[bytes, None]:
    for frame in events.start():
        yield frame
    async for item in reshape.frames(stream.iterator):
        if item is None:
            yield b": keep-alive\n\n"
        elif item is reshape.DONE:
            for frame in events.end():
                yield frame
            return
        elif "error" in item:
            yield b"".join(events.failed(item["error"]))
            return
        elif not item.get("choices"):
            events.usage = item.get("usage")
        else:
            choice = item["choices"][0]
            delta = choice.get("delta") or {}
            frames = []
            if delta.get("content"):
                frames += events.text_delta(delta["content"])
            if delta.get("tool_calls"):
                frames += events.calls(delta["tool_calls"])
            if choice.get("finish_reason"):
                events.finish = choice["finish_reason"]
            if frames:
                yield b"".join(frames)


# -- the service and its routes ----------------------------------------------------------------------------------
class ResponsesController(Controller):
    path = "/v1/responses"
    tags = ["openai"]

    @post("/", status_code=200, summary="Create a response (OpenAI's Responses API)",
          description="With stream: true, the Responses event stream (response.created ... response.completed).")
    async def create(self, request: Request, data: JSONBody[ResponseRequest], principal: NamedDependency[Principal],
                     openai_api: NamedDependency[OpenAIService], jobs: NamedDependency[JobService]) -> Response | Stream:
        if data.reasoning and data.reasoning.get("effort") not in (None, "none"):
            raise BadRequest("reasoning effort is not supported by the engines of this network", param="reasoning")
        if data.truncation not in (None, "disabled"):
            raise BadRequest('truncation must be "disabled"', param="truncation")
        messages = []
        if data.instructions is not None:
            messages.append({"role": "system", "content": data.instructions})
        if data.previous_response_id is not None:
            try:
                previous = await jobs.get(principal, data.previous_response_id)
            except NotFound:
                previous = None
            if previous is None or not ((previous.get("request") or {}).get("response") or {}).get("store", False):
                raise NotFound(f"Previous response with id '{data.previous_response_id}' not found",
                               param="previous_response_id")
            if previous["status"] != "completed":
                raise BadRequest(f"previous response {previous['id']} is {previous['status']}, not completed",
                                 param="previous_response_id")
            messages += _history(previous)
        messages += input_messages(data.input)
        fields: dict[str, Any] = {"model": data.model, "messages": messages, "stream": data.stream}
        if data.stream:
            fields["stream_options"] = {"include_usage": True}
        for name, value in (("tools", _tools(data.tools)), ("tool_choice", _choice(data.tool_choice)),
                            ("parallel_tool_calls", data.parallel_tool_calls), ("response_format", _format(data.text)),
                            ("max_tokens", data.max_output_tokens), ("temperature", data.temperature),
                            ("top_p", data.top_p), ("user", data.user)):
            if value is not None:
                fields[name] = value
        try:
            chat = msgspec.convert(fields, oa.ChatCompletionRequest)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"invalid input: {exc}", param="input") from None
        meta = {"instructions": data.instructions, "previous_response_id": data.previous_response_id,
                "tools": data.tools or [], "tool_choice": data.tool_choice, "text": data.text,
                "parallel_tool_calls": data.parallel_tool_calls if data.parallel_tool_calls is not None else True,
                "temperature": data.temperature, "top_p": data.top_p, "max_output_tokens": data.max_output_tokens,
                "metadata": data.metadata, "store": data.store, "user": data.user}
        answer = await openai_api.chat(principal, chat, request_id=request.scope.get("request_id"),
                                       idempotency_key=request.headers.get("idempotency-key"),
                                       extra_payload={"response": meta})
        if isinstance(answer, Stream):
            row = await jobs.get(principal, answer.headers["X-Job-Id"])
            return reshape.restream(answer, _events(answer, _Events(row, meta)))
        row = await jobs.get(principal, answer.content.id)
        return Response(response_object(row, meta), headers=dict(answer.headers))

    @get("/{response_id:str}", summary="Retrieve a response (OpenAI's Responses API)")
    async def retrieve(self, response_id: FromPath[str], principal: NamedDependency[Principal],
                       jobs: NamedDependency[JobService]) -> dict[str, Any]:
        row = await jobs.get(principal, response_id)
        meta = (row.get("request") or {}).get("response")
        if meta is None or not meta.get("store", True):
            raise NotFound(f"response {response_id} not found")
        return response_object(row, meta)
