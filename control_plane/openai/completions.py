"""The legacy `POST /v1/completions`: a prompt in, text out, streamed or not. The prompt runs as one user message
through the model's chat template (engines here serve chat), so this is a chat completion underneath."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.response import Stream
from msgspec import Meta, Struct

from control_plane.accounts.auth import Principal
from control_plane.errors import BadRequest
from control_plane.jobs.schemas import ModelId
from control_plane.openai import reshape
from control_plane.openai import schemas as oa
from control_plane.openai.service import OpenAIService
from control_plane.streaming import sse

#: OpenAI's default max_tokens for legacy completions.
DEFAULT_MAX_TOKENS = 16
_enc = msgspec.json.encode


class CompletionRequest(Struct, forbid_unknown_fields=False):
    """POST /v1/completions body (OpenAI's legacy completions)."""

    model: ModelId
    #: A string, or a list holding one string (token arrays and several prompts are a 400).
    prompt: str | list[Any]
    max_tokens: Annotated[int, Meta(ge=1, le=131_072)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Meta(ge=1, le=8)] | None = None
    best_of: int | None = None
    stream: bool | None = None
    stream_options: oa.StreamOptions | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    #: The log probabilities of this many likeliest tokens per position (0-5), in the legacy shape.
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    logit_bias: oa.LogitBias | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None

    #: What the handler refuses beyond the types: several prompts or token arrays, echo, suffix, best_of > 1.
    __openapi__: ClassVar[dict] = {
        "prompt": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "maxItems": 1,
                                                  "items": {"type": "string"}}]},
        "echo": {"anyOf": [{"const": False}, {"type": "null"}]},
        "suffix": {"anyOf": [{"const": ""}, {"type": "null"}]},
        "best_of": {"anyOf": [{"const": 1}, {"type": "null"}]},
        "": oa.STREAM_OPTIONS_NEED_STREAM}


class CompletionChoice(Struct):
    text: str
    index: int
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class TextCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: oa.CompletionUsage
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: None = None


def chat_request(body: CompletionRequest) -> oa.ChatCompletionRequest:
    """The chat completion a legacy completion runs as; fields we cannot honour are a 400 naming them."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise BadRequest("prompt must be a string or a list of one string (token arrays and several prompts "
                             "are not supported)", param="prompt")
        prompt = prompt[0]
    if body.echo:
        raise BadRequest("echo is not supported: the prompt is not repeated in the answer", param="echo")
    if body.suffix:
        raise BadRequest("suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.best_of not in (None, 1):
        raise BadRequest("best_of must be 1", param="best_of")
    fields = {"model": body.model, "messages": [{"role": "user", "content": prompt}],
              "max_tokens": body.max_tokens or DEFAULT_MAX_TOKENS, "stream": body.stream}
    for name in ("temperature", "top_p", "n", "stop", "seed", "frequency_penalty", "presence_penalty", "logit_bias",
                 "user"):
        if (value := getattr(body, name)) is not None:
            fields[name] = value
    if body.stream_options is not None:
        fields["stream_options"] = msgspec.to_builtins(body.stream_options)
    if body.logprobs is not None:
        fields.update(logprobs=True, top_logprobs=body.logprobs)
    return msgspec.convert(fields, oa.ChatCompletionRequest)


def legacy_logprobs(chat: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat logprobs in the legacy shape: tokens, token_logprobs, top_logprobs (dicts), text_offset."""
    if not chat or chat.get("content") is None:
        return None
    tokens, offsets, at = [], [], 0
    for t in chat["content"]:
        tokens.append(t["token"])
        offsets.append(at)
        at += len(t["token"])
    return {"tokens": tokens, "token_logprobs": [t["logprob"] for t in chat["content"]],
            "top_logprobs": [{a["token"]: a["logprob"] for a in t.get("top_logprobs") or ()} for t in chat["content"]],
            "text_offset": offsets}


def _chunk(chat: dict[str, Any], choices: list[dict[str, Any]], usage: Any = msgspec.UNSET) -> bytes:
    out: dict[str, Any] = {"id": chat["id"], "object": "text_completion", "created": chat["created"],
                           "model": chat["model"], "choices": choices}
    if usage is not msgspec.UNSET:
        out["usage"] = usage
    return sse.data(_enc(out))


async def _text_chunks(stream: Stream) -> AsyncGenerator[bytes, None]:
    async for item in reshape.frames(stream.iterator):
        if item is None:
            yield sse.HEARTBEAT
        elif item is reshape.DONE:
            yield b"data: [DONE]\n\n"
        elif "error" in item:
            yield sse.data(_enc(item))
        elif not item.get("choices"):
            if item.get("usage") is not None:
                yield _chunk(item, [], item["usage"])
        else:
            choice = item["choices"][0]
            text = (choice.get("delta") or {}).get("content") or ""
            if text or choice.get("finish_reason") or choice.get("logprobs"):
                yield _chunk(item, [{"text": text, "index": choice.get("index", 0),
                                     "logprobs": legacy_logprobs(choice.get("logprobs")),
                                     "finish_reason": choice.get("finish_reason")}])


class CompletionsController(Controller):
    path = "/v1"
    tags = ["openai"]

    @post("/completions", status_code=200, summary="Create a completion (OpenAI's legacy completions)",
          description="The prompt runs as one user message through the model's chat template. With stream: true, "
                      "text_completion chunks (text/event-stream, ending in data: [DONE]).",
          responses={200: ResponseSpec(data_container=TextCompletion, description="The completion")})
    async def completions(self, request: Request, data: JSONBody[CompletionRequest],
                          principal: NamedDependency[Principal],
                          openai_api: NamedDependency[OpenAIService]) -> Response[TextCompletion] | Stream:
        answer = await openai_api.chat(principal, chat_request(data), request_id=request.scope.get("request_id"),
                                       idempotency_key=request.headers.get("idempotency-key"))
        if isinstance(answer, Stream):
            return reshape.restream(answer, _text_chunks(answer))
        chat, headers = reshape.completion(answer)
        return Response(TextCompletion(
            id=chat["id"], created=chat["created"], model=chat["model"], usage=answer.content.usage,
            choices=[CompletionChoice(c["message"].get("content") or "", c["index"], c["finish_reason"],
                                      legacy_logprobs(c.get("logprobs"))) for c in chat["choices"]]), headers=headers)
