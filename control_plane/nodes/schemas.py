"""Wire shapes of `/api/v1/nodes`: a node as any caller sees it, a page of them, a drain acknowledgement."""

from __future__ import annotations

from msgspec import Struct

from control_plane.trust.service import TrustView


class NodeModel(Struct):
    id: str
    loaded: bool
    tokens_per_second: float | None
    embeddings: bool
    #: What the node's engine says this model can do: chat, embeddings, tools, vision, logprobs, logit_bias.
    capabilities: list[str] = []
    #: The context window in tokens, when the engine reports it.
    context_length: int | None = None


class OperatorStats(Struct):
    """Shown only to the node's own operator account."""

    jobs_served: int
    prompt_tokens: int
    completion_tokens: int
    credits_charged: int
    earnings: int


class NodeEntry(Struct, omit_defaults=True):
    id: str
    name: str | None
    state: str
    engine: str | None
    models: list[NodeModel]
    slots: int
    active_jobs: int
    last_seen: str | None
    labels: dict[str, str]
    operator: OperatorStats | None = None
    #: 0..1, shown to admins and to the node's own operator (docs/trust.md); with the evidence behind it.
    reputation: float | None = None
    trust: TrustView | None = None


class NodeList(Struct):
    nodes: list[NodeEntry]
    #: Pass as `cursor` for the next page; null on the last one.
    next_cursor: str | None = None


class DrainAccepted(Struct):
    node_id: str
    state: str


class Revoked(Struct):
    node_id: str
    name: str
    revoked: bool
    #: Live bus connections of the node that were closed now (0: it was not connected).
    disconnected: int
