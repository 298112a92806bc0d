"""Request and response shapes of the OpenAI-compatible `/v1` API, as msgspec Structs."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta, Struct

from control_plane.jobs import tools as tool_rules
from control_plane.jobs.schemas import ModelId
from control_plane.openai.tokens import CL100K_ORDINARY

MaxTokens = Annotated[int, Meta(ge=1, le=131_072)]


# -- chat completions: request ---------------------------------------------------------------------
#: Token id (digits) -> bias, -100..100.
LogitBias = dict[Annotated[str, Meta(pattern=r"^[0-9]+$")], Annotated[float, Meta(ge=-100.0, le=100.0)]]
_TEXT = {"type": "string", "minLength": 1}
_TOKENS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": CL100K_ORDINARY - 1}}


def _needs(field: str, then: dict) -> dict:
    """Object-level JSON Schema: when `field` is given (not null), `then` holds too."""
    return {"anyOf": [{"properties": {field: {"type": "null"}}}, then]}  # `properties` holds when it is absent


STREAM_OPTIONS_NEED_STREAM = _needs("stream_options", {"required": ["stream"], "properties": {"stream": {"const": True}}})
_ANY_TOOLS = {"anyOf": [{"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}},
                        {"required": ["functions"], "properties": {"functions": {"type": "array", "minItems": 1}}}]}


class ChatMessage(Struct, forbid_unknown_fields=False):
    """A message; `content` is a string, a list of content parts (text, image_url) or null; an assistant
    message may carry the `tool_calls` it made, a tool message the `tool_call_id` it answers."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    __openapi__: ClassVar[dict] = {"tool_calls": tool_rules.TOOL_CALLS_SCHEMA, "": {"allOf": [
        tool_rules.CALLS_ONLY_FROM_ASSISTANT,
        {"anyOf": [{"properties": {"role": {"enum": ["system", "developer", "user", "assistant"]}}},
                   # a tool message names the call it answers
                   {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string", "minLength": 1}}}]},
    ]}}


class StreamOptions(Struct, forbid_unknown_fields=False):
    include_usage: bool = False


class JsonSchemaFormat(Struct, forbid_unknown_fields=False):
    name: str = "response"
    #: The JSON Schema the answer must follow (passed to the engine's structured output).
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(Struct, forbid_unknown_fields=False):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    __openapi__: ClassVar[dict] = {"": {"anyOf": [  # json_schema needs a (non-empty) schema
        {"properties": {"type": {"enum": ["text", "json_object"]}}},
        {"required": ["json_schema"], "properties": {"json_schema": {
            "type": "object", "required": ["schema"], "properties": {"schema": {"type": "object", "minProperties": 1}}}}}]}}


class ChatCompletionRequest(Struct, forbid_unknown_fields=False):
    """POST /v1/chat/completions body; fields Infernet does not use are accepted and ignored."""

    model: ModelId
    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=10_000)]
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    #: Choices (1-8), each its own job.
    n: Annotated[int, Meta(ge=1, le=8)] | None = None
    response_format: ResponseFormat | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    #: Function tools ({"type": "function", "function": {name, description, parameters}}), at most 128.
    tools: Annotated[list[dict[str, Any]], Meta(max_length=128)] | None = None
    #: "auto", "none", "required" or {"type": "function", "function": {"name": ...}}.
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    #: Legacy function calling (become tools / tool_choice).
    functions: Annotated[list[dict[str, Any]], Meta(max_length=128)] | None = None
    function_call: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    #: Token id -> bias (-100..100), passed to engines that have it.
    logit_bias: LogitBias | None = None
    #: OpenAI features no engine here has: a 400 naming the field when set (modalities other than ["text"] too).
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    web_search_options: dict[str, Any] | None = None
    # Infernet extensions: the gateway fields of POST /api/v1/jobs (validated as there).
    node_id: str | None = None
    max_wallclock_secs: float | None = None
    routing: dict[str, Any] | None = None
    fallback_models: list[str] | None = None
    webhook_url: str | None = None

    __openapi__: ClassVar[dict] = {
        "tools": tool_rules.TOOLS_SCHEMA, "tool_choice": tool_rules.TOOL_CHOICE_SCHEMA,
        "functions": tool_rules.FUNCTIONS_SCHEMA,
        **{name: {"type": "null"} for name in ("audio", "prediction", "reasoning_effort", "web_search_options")},
        "modalities": {"anyOf": [{"type": "null"}, {"const": ["text"]}]},
        "": {"allOf": [STREAM_OPTIONS_NEED_STREAM, _needs("top_logprobs", {"required": ["logprobs"], "properties": {
            "logprobs": {"const": True}}}), *(_needs(name, _ANY_TOOLS) for name in (
                "tool_choice", "function_call", "parallel_tool_calls")),
            {"anyOf": [{"properties": {"tools": {"maxItems": 0}}},  # not both (absent, null or [] is none)
                       {"properties": {"functions": {"maxItems": 0}}}]}]}}


# -- chat completions: response --------------------------------------------------------------------
class FunctionCall(Struct):
    name: str
    #: The arguments as the model wrote them: JSON text.
    arguments: str


class ToolCallOut(Struct):
    id: str
    function: FunctionCall
    type: str = "function"


class AssistantMessage(Struct):
    #: null when the model answered only with tool calls.
    content: str | None
    role: str = "assistant"
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(Struct):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob]
    bytes: list[int] | None = None


class ChoiceLogprobs(Struct):
    content: list[TokenLogprob] | None
    refusal: None = None


class Choice(Struct):
    index: int
    message: AssistantMessage
    #: stop, length or tool_calls.
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class CompletionUsage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    object: str = "chat.completion"
    system_fingerprint: None = None


# -- models ----------------------------------------------------------------------------------------
class Model(Struct):
    id: str
    created: int = 0
    object: str = "model"
    owned_by: str = "infernet"


class ModelList(Struct):
    data: list[Model]
    object: str = "list"


# -- embeddings ------------------------------------------------------------------------------------
#: The vector size asked of the engine.
Dimensions = Annotated[int, Meta(ge=1, le=65_536)]

class EmbeddingRequest(Struct, forbid_unknown_fields=False):
    model: ModelId
    #: A string, a list of strings, a token array or a list of token arrays (cl100k_base ids, decoded to text).
    input: str | Annotated[list[Any], Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Dimensions | None = None

    __openapi__: ClassVar[dict] = {"input": {"anyOf": [
        _TEXT, *({"type": "array", "minItems": 1, "maxItems": 2048, "items": items} for items in (_TEXT, _TOKENS["items"])),
        {"type": "array", "minItems": 1, "maxItems": 2048, "items": _TOKENS}]}}
    user: Annotated[str, Meta(max_length=256)] | None = None


class Embedding(Struct):
    index: int
    #: Floats, or base64 of little-endian float32 when encoding_format is "base64".
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingUsage(Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: str = "list"
