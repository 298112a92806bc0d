"""Live network facts about one model, read from the NodeRegistry: free capacity, tokens/sec, queue, price."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from control_plane.scheduler.placement import known_tps
from control_plane.scheduler.registry import NodeRegistry

#: How many placeable nodes are looked at per model (best first); enough to tell "one free" from "several free".
SAMPLE_NODES = 4


class ModelLive(msgspec.Struct, frozen=True):
    """What the router knows about a model right now on this replica."""

    model: str
    status: str  # ready: a node has a free slot; busy: accepting nodes, all full; unavailable: none accepting
    tokens_per_second: float  # the best free node's measured figure, else the model's prior
    loaded: bool = True  # the best free node has it in memory (unknown when busy: assumed loaded)
    free_nodes: int = 0  # placeable nodes seen (at most SAMPLE_NODES)
    queued: int = 0  # jobs for this model waiting in this replica's queue
    advertised_price: float | None = None  # the best free node's `price_per_mtok` label, if any


def _label_price(labels) -> float | None:
    raw = labels.get("price_per_mtok")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def live(registry: NodeRegistry, model: str, queue_depth: Callable[[str], int] | None = None) -> ModelLive:
    """A snapshot of one model's capacity from the registry's indexes (no scan of all nodes)."""
    queued = queue_depth(model) if queue_depth is not None else 0
    if not registry.accepting(model):
        return ModelLive(model, "unavailable", registry.tps_prior(model), queued=queued)
    ranked = registry.ranked(model, SAMPLE_NODES)
    if not ranked:
        return ModelLive(model, "busy", registry.tps_prior(model), queued=queued)
    view = registry.get(ranked[0][1])
    info = view.models.get(model) if view is not None else None
    tps = known_tps(info.tokens_per_second if info is not None else None) or registry.tps_prior(model)
    return ModelLive(model, "ready", tps, loaded=bool(info.loaded) if info is not None else True,
                     free_nodes=len(ranked), queued=queued,
                     advertised_price=_label_price(view.labels) if view is not None else None)
