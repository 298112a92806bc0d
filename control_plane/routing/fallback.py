"""Fallback: when a job's model has no capacity, or its nodes fail before any token, the next model serves it.

A job's chain comes from the request (`fallback_models`), a configured chain for its model
(INFERNET_FALLBACK_CHAINS), or, for `model: "auto"`, the next-best models of the routing decision. It is
kept in the job's request as `fallback = {"from": first model, "depth": n, "chain": [models left]}`:

- at submission, the first model of [model, *chain] with a free node is taken (else the first one that
  has an accepting node, and the job queues for it);
- in the dispatcher's queue, a job whose model no accepting node serves any more, or whose earlier attempt
  failed before any token and that has no untried free node left, moves to the next model with an
  accepting node (the row's `model` changes in the same statement that checks the job is still pending).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from control_plane.errors import ModelNotFound, NoCapacity
from control_plane.scheduler import placement
from control_plane.scheduler.registry import NodeRegistry
from control_plane.store import Database, StoreError
from control_plane.store.database import jsonb

if TYPE_CHECKING:
    from control_plane.jobs.dispatcher import Dispatcher, QueuedJob

log = structlog.get_logger("control_plane.fallback")


def parse_chains(spec: str) -> dict[str, list[str]]:
    """"a>b>c;x>y" -> {"a": ["b", "c"], "b": ["c"], "x": ["y"]} (each model falls back along the rest)."""
    chains: dict[str, list[str]] = {}
    for part in spec.split(";"):
        models = [m.strip() for m in part.split(">") if m.strip()]
        for i, model in enumerate(models[:-1]):
            chains.setdefault(model, models[i + 1:])
    return chains


def _status(registry: NodeRegistry, model: str) -> str:
    if not registry.accepting(model):
        return "unavailable"
    return "ready" if registry.ranked(model, 1) else "busy"


def choose(registry: NodeRegistry, model: str, chain: Sequence[str], *, warm: bool = True) -> tuple[str, int]:
    """The model to submit to and its depth in [model, *chain]: the first with a free node, else the first with
    an accepting one; before the registry is warm, the first one some node advertises (else `model`)."""
    candidates = [model, *[m for m in chain if m != model]]
    if not warm:
        return next(((m, i) for i, m in enumerate(candidates) if registry.has_model(m)), (model, 0))
    statuses = [_status(registry, m) for m in candidates]
    for wanted in ("ready", "busy"):
        if wanted in statuses:
            i = statuses.index(wanted)
            return candidates[i], i
    if not registry.has_model(model):
        raise ModelNotFound(f"Model {model} is not registered on the network"
                            + (f", nor any of its fallbacks ({', '.join(chain)})" if chain else ""))
    raise NoCapacity(f"No nodes available with model {model}" + (f" or its fallbacks ({', '.join(chain)})" if chain else ""))


def headers(row: dict[str, Any]) -> dict[str, str]:
    """x-model-used, and x-fallback-from / x-fallback-depth when a fallback served the job."""
    out = {"x-model-used": row["model"]}
    fallback = (row.get("request") or {}).get("fallback") or {}
    if fallback.get("depth"):
        out["x-fallback-from"] = fallback["from"]
        out["x-fallback-depth"] = str(fallback["depth"])
    return out


class Fallback:
    """The dispatcher's hook: decides when a queued job leaves its model, and moves it."""

    def __init__(self, db: Database, registry: NodeRegistry) -> None:
        self._db = db
        self._registry = registry

    def wants_switch(self, job: QueuedJob) -> bool:
        """Before placing a queued job: True when its model cannot serve it (no accepting node, or its attempt
        failed and no untried free node is left) and a model of its chain can."""
        chain = (job.request.get("fallback") or {}).get("chain")
        if not chain or job.pinned_node_id is not None:
            return False
        if self._registry.accepting(job.model):
            if not (job.attempt > 1 and job.tried):
                return False
            if placement.candidates(self._registry, job.model, exclude=job.tried, limit=1):
                return False  # another node of the model is free: retry there first
        return any(self._registry.accepting(m) for m in chain)

    async def switch(self, job: QueuedJob, dispatcher: Dispatcher) -> None:
        fallback = job.request.get("fallback") or {}
        chain = list(fallback.get("chain") or ())
        index = next((i for i, m in enumerate(chain) if self._registry.accepting(m)), None)
        if index is None:
            dispatcher.enqueue(job, front=True, wake=False)
            return
        model = chain[index]
        moved = {"from": fallback.get("from") or job.model, "depth": int(fallback.get("depth") or 0) + index + 1,
                 "chain": chain[index + 1:]}
        try:
            row = await self._db.fetchone("switch_job_model", {
                "id": job.id, "from_model": job.model, "model": model, "fallback": jsonb(moved)})
        except StoreError as exc:
            log.warning("fallback_not_recorded", job_id=job.id, error=str(exc), action="job stays queued")
            dispatcher.enqueue(job, front=True, wake=False)
            return
        if row is None:
            dispatcher.forget(job.id)  # cancelled or ended meanwhile
            return
        log.warning("job_fell_back", job_id=job.id, from_model=job.model, model=model, depth=moved["depth"],
                    detail="its model has no node left that can take it")
        job.model = model
        job.request = {**job.request, "fallback": moved}
        job.tried.clear()
        dispatcher.enqueue(job, front=True)
