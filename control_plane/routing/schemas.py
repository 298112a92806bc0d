"""Shapes of smart routing: the per-request `routing` object and the decision a job records."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from control_plane.routing.classifier import Complexity, Task

Optimize = Literal["balanced", "quality", "cost", "latency"]
OPTIMIZE_MODES: tuple[Optimize, ...] = ("balanced", "quality", "cost", "latency")
CandidateStatus = Literal["ready", "busy", "unavailable"]
PoolModel = Annotated[str, Meta(min_length=1, max_length=200)]


class RoutingOptions(Struct, forbid_unknown_fields=True):
    """Per-request overrides of the key's routing defaults (the `routing` object of a request body)."""

    model_pool: Annotated[list[PoolModel], Meta(min_length=1, max_length=32)] | None = None
    optimize: Optimize | None = None
    task: Task | None = None


class ModelScore(Struct, omit_defaults=True):
    """One pool model as the router scored it (0..1 each, higher is better); unavailable ones have no score."""

    model: str
    status: CandidateStatus
    score: float | None = None
    fit: float | None = None
    cost: float | None = None
    latency: float | None = None
    expected_latency_ms: int | None = None
    expected_cost: float | None = None


class RoutingDecision(Struct):
    """Why a `model: "auto"` request went where it went; stored on the job as `routing`."""

    model: str
    task: Task
    complexity: Complexity
    confidence: float
    optimize: Optimize
    routing_time_ms: float
    task_source: Literal["classifier", "request"] = "classifier"
    pool: list[str] = []
    candidates: list[ModelScore] = []
    object: str = "routing"

    def event(self) -> dict[str, Any]:
        """The routing SSE event a streamed response sends first (the reference's shape)."""
        return {"object": "routing", "task": self.task, "complexity": self.complexity,
                "confidence": self.confidence, "model": self.model, "routing_time_ms": self.routing_time_ms}

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    def fallbacks(self, limit: int) -> list[str]:
        """The next-best available models, best first: the fallback chain of this decision."""
        return [c.model for c in self.candidates if c.status != "unavailable" and c.model != self.model][:limit]


_EVENT_FIELDS = ("object", "task", "complexity", "confidence", "model", "routing_time_ms")


def routing_event(row: dict[str, Any]) -> dict[str, Any] | None:
    """The routing SSE event of a job routed with model "auto" (None for other jobs): a stream sends it first,
    before any token. `row` is what JobService.submit/get return (the decision is in row["request"])."""
    decision = (row.get("request") or {}).get("routing")
    if not decision:
        return None
    return {"object": "routing", **{k: decision[k] for k in _EVENT_FIELDS[1:] if k in decision}}
