"""Every message on the bus as a msgspec Struct: advertisements, assignments, tokens, outcomes."""

from __future__ import annotations

from typing import Literal, Union

import msgspec

from protocol.version import PROTOCOL_VERSION

NodeState = Literal["online", "draining"]
RejectReason = Literal["at_capacity", "model_unavailable", "draining", "bad_assignment", "cancelled"]
FinishReason = Literal["stop", "length", "cancelled"]
JobKind = Literal["chat", "embed"]
#: What a model can do, as nodes advertise it (ModelInfo.capabilities) and requests need it.
CAPABILITIES = ("chat", "embeddings", "tools", "vision", "logprobs", "logit_bias")


class _Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Base of all wire messages: frozen, unknown fields ignored for forward compatibility."""


class ToolCall(_Wire):
    """A function call a model made: OpenAI's shape, with `arguments` as the model's JSON text."""

    id: str
    name: str
    arguments: str = "{}"


class ChatMessage(_Wire, omit_defaults=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    #: An assistant message: the function calls it made.
    tool_calls: tuple[ToolCall, ...] = ()
    #: A tool message: the call it answers, and that call's function name.
    tool_call_id: str | None = None
    name: str | None = None
    #: Images for vision models, base64 (no data: prefix).
    images: tuple[str, ...] = ()


class GpuInfo(_Wire):
    name: str
    vram_total_mb: int | None = None
    vram_free_mb: int | None = None
    utilization_pct: float | None = None
    temperature_c: float | None = None


class ModelInfo(_Wire):
    """One model a node can serve; tokens_per_second is None when not yet measured."""

    name: str
    loaded: bool = False
    size_bytes: int | None = None
    context_length: int | None = None
    tokens_per_second: float | None = None
    embeddings: bool = False
    #: What the engine says the model can do (names from CAPABILITIES); () = not reported (an older node:
    #: embeddings when `embeddings`, else chat).
    capabilities: tuple[str, ...] = ()


class Advertisement(_Wire, tag="advertisement"):
    """Heartbeat a node publishes every few seconds; the control plane's registry is built from it."""

    node_id: str
    agent_version: str
    engine: str
    state: NodeState
    slots: int
    active_jobs: int
    models: tuple[ModelInfo, ...] = ()
    engine_version: str | None = None
    engine_ok: bool = True
    gpus: tuple[GpuInfo, ...] = ()
    labels: dict[str, str] = {}
    #: Random id of this agent process; a new one means the node restarted and lost its in-flight jobs.
    boot_id: str = ""
    #: Jobs the node holds (running, or finished but whose outcome is not yet stored); None = not reported.
    running: tuple[str, ...] | None = None
    #: Jobs admitted by this agent process so far: an advertisement with admitted >= a reply's `admitted`
    #: was built after that job was accepted, so a job it does not list in `running` has ended (0 = not reported).
    admitted: int = 0
    interval_s: float = 5.0
    sent_at: float = 0.0
    protocol_version: int = PROTOCOL_VERSION


class GenerationParams(_Wire, omit_defaults=True):
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    #: Structured output: "json" or a JSON Schema object, passed to the engine.
    format: Union[str, dict, None] = None
    #: Function tools the model may call: OpenAI's {"type": "function", "function": {name, description,
    #: parameters}} objects.
    tools: tuple[dict, ...] = ()
    #: "auto", "none", "required" or {"type": "function", "function": {"name": ...}}; None = the engine's default.
    tool_choice: Union[str, dict, None] = None
    parallel_tool_calls: bool | None = None
    #: Log probabilities of the generated tokens (and of the `top_logprobs` likeliest at each position).
    logprobs: bool = False
    top_logprobs: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    #: Token id (as a string) -> bias added to its logit.
    logit_bias: dict[str, float] | None = None
    #: Embedding jobs: the vector size asked for (models that support shortening).
    dimensions: int | None = None


class Assignment(_Wire, tag="assignment"):
    """A control plane offers one attempt of one job to one node (request/reply)."""

    job_id: str
    attempt: int
    lease: str
    model: str
    kind: JobKind = "chat"
    messages: tuple[ChatMessage, ...] = ()
    inputs: tuple[str, ...] = ()
    params: GenerationParams = GenerationParams()
    #: Unix time after which the node must stop the job.
    deadline: float = 0.0
    stream: bool = True
    protocol_version: int = PROTOCOL_VERSION


class AssignmentReply(_Wire, tag="assignment_reply"):
    job_id: str
    attempt: int
    accepted: bool
    node_id: str
    reason: RejectReason | None = None
    detail: str | None = None
    #: An accepted job's admission number on the node (see Advertisement.admitted); 0 = not reported.
    admitted: int = 0


class TokenChunk(_Wire, tag="token"):
    """A run of generated text; seq starts at 1 and increases by one per chunk."""

    job_id: str
    attempt: int
    seq: int
    text: str
    #: The node that generated it; must equal the node named by the subject it was published on.
    node_id: str = ""
    #: The lease of the offer this run answers: unique per offer, so it tells apart two runs of one attempt
    #: number (an offer the node did not answer in time is offered again under the same attempt).
    lease: str = ""


class Usage(_Wire):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Timings(_Wire):
    """What the node measured; None means the engine did not report it."""

    ttft_ms: float | None = None
    duration_ms: float | None = None
    tokens_per_second: float | None = None


class TopLogprob(_Wire):
    token: str
    logprob: float


class TokenLogprob(_Wire):
    """One generated token's log probability, and the likeliest alternatives at its position."""

    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


class EmbedOutput(_Wire):
    vectors: tuple[tuple[float, ...], ...] = ()


class JobResult(_Wire, tag="result"):
    """A finished attempt: the whole text (or embeddings), usage and timings."""

    job_id: str
    attempt: int
    lease: str
    node_id: str
    content: str = ""
    finish_reason: FinishReason = "stop"
    usage: Usage = Usage()
    timings: Timings = Timings()
    chunks: int = 0
    embeddings: EmbedOutput | None = None
    #: The function calls the model made (finish_reason stays "stop" on the wire; the API says "tool_calls").
    tool_calls: tuple[ToolCall, ...] = ()
    #: Per generated token, when the assignment asked for logprobs and the engine reported them.
    logprobs: tuple[TokenLogprob, ...] | None = None


class JobFailure(_Wire, tag="failure"):
    """An attempt that ended without a result; error is a stable code, message is for humans."""

    job_id: str
    attempt: int
    lease: str
    node_id: str
    error: str
    message: str
    partial_content: str = ""
    usage: Usage = Usage()
    chunks: int = 0
    #: True when the failure happened before the engine produced any token (safe to retry).
    retryable: bool = False


JobOutcome = Union[JobResult, JobFailure]


class Cancel(_Wire, tag="cancel"):
    job_id: str
    attempt: int
    reason: str = "cancelled"
    #: The offer's lease when the cancel is for one offer only ("" = whatever lease that attempt has).
    lease: str = ""


class AdvertisementRequest(_Wire, tag="advertisement_request"):
    """A control plane asks every node to advertise now (broadcast on subjects.advertisement_requests())."""

    replica_id: str = ""
    sent_at: float = 0.0


class NodeVerify(_Wire, tag="node_verify"):
    """Request/reply on the node's own verify subject: how does the control plane see this node (doctor)?

    No token: the bus already authenticated the connection, and the subject names the node.
    """

    node_id: str
    sent_at: float = 0.0


class NodeVerifyReply(_Wire, tag="node_verify_reply"):
    node_id: str
    accepted: bool
    reason: str | None = None
    name: str | None = None
    #: The control plane's clock (unix seconds), to measure the node's clock skew.
    server_time: float = 0.0
    #: Whether the control plane can record results right now (its results stream and consumer exist).
    results_ready: bool = True


class Drain(_Wire, tag="drain"):
    node_id: str
    reason: str = "requested"


class KeysInvalidated(_Wire, tag="keys_invalidated"):
    """Control plane to control planes (subjects.control_events()): drop these API keys from auth caches.

    Sent when a key is revoked or changed, or an account deactivated (account_id set: all of its keys).
    """

    key_ids: tuple[str, ...] = ()
    account_id: str | None = None
    origin: str = ""
