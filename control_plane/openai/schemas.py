"""Request and response shapes of the OpenAI-compatible `/v1` API, as msgspec Structs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from control_plane.jobs.schemas import ModelId

MaxTokens = Annotated[int, Meta(ge=1, le=131_072)]


# -- chat completions: request ---------------------------------------------------------------------
class ChatMessage(Struct, forbid_unknown_fields=False):
    """A message; `content` is a string, a list of content parts ({"type": "text", "text": ...}) or null."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


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
    tools: list[dict[str, Any]] | None = None
    logprobs: bool | None = None
    # Infernet extensions: the gateway fields of POST /api/v1/jobs (validated as there).
    node_id: str | None = None
    max_wallclock_secs: float | None = None
    routing: dict[str, Any] | None = None
    fallback_models: list[str] | None = None
    webhook_url: str | None = None


# -- chat completions: response --------------------------------------------------------------------
class AssistantMessage(Struct):
    content: str
    role: str = "assistant"
    refusal: None = None


class Choice(Struct):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


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
    #: A string or a list of strings (token arrays are not supported).
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
