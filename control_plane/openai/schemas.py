"""Request and response shapes of the OpenAI-compatible `/v1` API, as msgspec Structs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from control_plane.jobs.schemas import ModelId

MaxTokens = Annotated[int, Meta(ge=1, le=131_072)]


# -- chat completions: request ---------------------------------------------------------------------
class ChatMessage(Struct, forbid_unknown_fields=False):
    """A message; `content` is a string, a list of content parts (text, image_url) or null; an assistant
    message may carry the `tool_calls` it made, a tool message the `tool_call_id` it answers."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


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
    n: int | None = None
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
    logit_bias: dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
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
class EmbeddingRequest(Struct, forbid_unknown_fields=False):
    model: ModelId
    #: A string, a list of strings, a token array or a list of token arrays (cl100k_base ids, decoded to text).
    input: str | Annotated[list[Any], Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
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
