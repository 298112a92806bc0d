"""The small interface every inference engine implements, and the errors it may raise.

Error tree::

    EngineError                 anything the engine did wrong; `code` is the job failure code
    ├── EngineUnavailable       engine not reachable (connection refused / reset) -> "engine_unavailable"
    ├── EngineBusy              engine refused for load (e.g. Ollama 503 queue full) -> "engine_busy"
    ├── ModelUnavailable        the engine does not have the model -> "model_unavailable"
    └── GenerationFailed        the engine reported an error, possibly mid-stream -> "engine_error"
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from protocol import ChatMessage, GenerationParams, TokenLogprob, ToolCall


class EngineError(Exception):
    """Root of engine errors; `code` becomes the job's failure code."""

    code = "engine_error"

    def __init__(self, message: str, *, produced_tokens: bool = False) -> None:
        super().__init__(message)
        self.produced_tokens = produced_tokens


class EngineUnavailable(EngineError):
    """The engine could not be reached."""

    code = "engine_unavailable"


class EngineBusy(EngineError):
    """The engine refused the request because it is overloaded."""

    code = "engine_busy"


class ModelUnavailable(EngineError):
    """The engine does not have the requested model."""

    code = "model_unavailable"


class GenerationFailed(EngineError):
    """The engine reported an error while generating."""

    code = "engine_error"


class ContextLengthExceeded(EngineError):
    """The prompt does not fit the model's context window (the caller's request, not the node, is at fault)."""

    code = "context_length_exceeded"


#: HTTP statuses with which an engine refuses for load (Ollama's full queue, a server's 503, a rate limit's 429).
BUSY_STATUSES = frozenset({429, 503})


def status_error(status: int, message: str, *, produced_tokens: bool = False) -> EngineError:
    """The EngineError an engine's refusal with this HTTP status means: busy, no such model (404), or failed."""
    if status in BUSY_STATUSES:
        return EngineBusy(message, produced_tokens=produced_tokens)
    if status == 404:
        return ModelUnavailable(message, produced_tokens=produced_tokens)
    return GenerationFailed(message, produced_tokens=produced_tokens)


def unreachable(server: str, exc: BaseException, *, produced_tokens: bool = False) -> EngineUnavailable:
    """The EngineUnavailable for a transport error (refused, reset, timed out): the server and the cause."""
    return EngineUnavailable(f"{server} unreachable: {str(exc) or type(exc).__name__}", produced_tokens=produced_tokens)


@dataclass(frozen=True, slots=True)
class EngineModel:
    """A model the engine can serve; `loaded` means resident in memory right now."""

    name: str
    loaded: bool = False
    size_bytes: int | None = None
    context_length: int | None = None
    embeddings: bool = False
    #: What the engine says the model can do (protocol.CAPABILITIES names); () = it did not say.
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of generated text as the engine streamed it."""

    text: str


@dataclass(slots=True)
class Completion:
    """The end of a generation: counts and timings from the engine's own counters (None = unknown)."""

    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: Seconds the engine spent generating completion tokens (Ollama: eval_duration).
    eval_seconds: float | None = None
    extra: dict = field(default_factory=dict)
    #: Function calls the model made (whole calls: arguments complete).
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: Per generated token, when logprobs were asked for and the engine reported them; None otherwise.
    logprobs: list[TokenLogprob] | None = None

    @property
    def tokens_per_second(self) -> float | None:
        if not self.completion_tokens or not self.eval_seconds:
            return None
        return self.completion_tokens / self.eval_seconds


@dataclass(frozen=True, slots=True)
class EngineHealth:
    ok: bool
    version: str | None = None
    detail: str | None = None


class Engine(Protocol):
    """What the agent needs from an inference engine; implementations live one per module."""

    name: str

    async def health(self) -> EngineHealth:
        """Is the engine reachable, and which version is it."""
        ...

    async def list_models(self) -> Sequence[EngineModel]:
        """Every model the engine can serve, with `loaded` set for those in memory."""
        ...

    def chat(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta | Completion]:
        """Stream a chat completion: Deltas, then exactly one Completion last. Raises EngineError."""
        ...

    async def embed(self, model: str, inputs: Sequence[str], *,
                    dimensions: int | None = None) -> tuple[list[list[float]], int | None]:
        """Embed each input (at `dimensions` when given); returns the vectors and the prompt token count (None if
        unknown)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
