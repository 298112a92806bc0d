"""Placement policy: the score that ranks nodes for a job, and the best-first candidate list from the registry."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from control_plane.scheduler import capabilities

if TYPE_CHECKING:
    from control_plane.scheduler.registry import NodeRegistry

#: Expected completion times are compared in bands 10 % wide, so near-equal nodes tie on speed
#: and the next criteria (reliability, then load) decide between them.
BAND_RATIO = 1.1
_LOG_BAND = math.log(BAND_RATIO)
#: Tokens/sec assumed for a model when no node has measured it yet.
DEFAULT_PRIOR_TPS = 20.0
#: Success rates are compared in steps of 1/RELIABILITY_STEPS (5 %).
RELIABILITY_STEPS = 20
_TPS_MIN, _TPS_MAX = 1e-3, 1e6


class Score(NamedTuple):
    """A node's rank for one model; lower is better, compared field by field."""

    unloaded: int  # 0: model in memory, 1: on disk only
    cost_band: int  # log-band of expected seconds per token (load factor / tokens-per-second)
    unreliability: int  # minus the success rate in RELIABILITY_STEPS steps
    active: int  # estimated jobs running on the node


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node that can take the job, with the score that ranked it."""

    node_id: str
    score: Score

    def explain(self) -> str:
        """One line for logs: why this node ranked where it did."""
        s = self.score
        return (
            f"{self.node_id}: {'loaded' if not s.unloaded else 'on disk'}, "
            f"~{BAND_RATIO ** s.cost_band:.3g} s/token, "
            f"success ~{-s.unreliability / RELIABILITY_STEPS:.2f}, active {s.active}"
        )


def known_tps(value: float | None) -> float | None:
    """A usable tokens/sec figure, clamped to a sane range; None when unknown (missing, zero, negative, NaN)."""
    if value is None or not value > 0 or math.isnan(value):
        return None
    return min(max(float(value), _TPS_MIN), _TPS_MAX)


def tps_band(tps: float) -> int:
    """Log-band of a (known, positive) tokens/sec figure."""
    return round(math.log(tps) / _LOG_BAND)


def load_band(active: int, slots: int) -> int:
    """Log-band of the load factor 1 + active/slots: a full node is about twice as slow per token as an idle one."""
    return math.floor(math.log1p(min(active, slots) / slots) / _LOG_BAND) if slots > 0 else 0


def reliability_rank(success_rate: float) -> int:
    """Lower is better: minus the success rate quantised to RELIABILITY_STEPS."""
    return -round(min(max(success_rate, 0.0), 1.0) * RELIABILITY_STEPS)


def score(*, loaded: bool, active: int, slots: int, tokens_per_second: float | None, prior_tps: float,
          success_rate: float) -> Score:
    """Score one node for one model; an unknown tokens/sec counts as the model's prior (a neutral figure)."""
    tps = known_tps(tokens_per_second) or known_tps(prior_tps) or DEFAULT_PRIOR_TPS
    return Score(0 if loaded else 1, load_band(active, slots) - tps_band(tps), reliability_rank(success_rate),
                 active)


def candidates(registry: NodeRegistry, model: str, *, pinned: str | None = None, exclude: Collection[str] = (),
               limit: int = 3, needs: Collection[str] = (), probe: bool = False) -> list[Candidate]:
    """Nodes that can take a job for `model` now, best first (at most `limit`).

    Candidates are online, not draining, engine up, advertise the model (with every capability in
    `needs`: tools, vision ...) and have a free slot.
    A pinned job may only go to its node, which must be online, not draining and have the model
    (a free slot is not required: the node itself answers at_capacity); otherwise the list is empty.
    Equal scores go to the node that has held its score longest: a node that takes a job is
    re-ranked (one more active) behind its peers, so load rotates over equal nodes, and the
    result is a deterministic function of the calls made on the registry.
    """
    if limit <= 0:
        return []
    if pinned is not None:
        if pinned in exclude:
            return []
        found = registry.score_of(pinned, model, probe=probe)  # a quarantined node takes probes only
        if found is not None and needs:
            view = registry.get(pinned)
            if view is None or model not in view.models or not capabilities.has(view.models[model], needs):
                return []
        return [] if found is None else [Candidate(pinned, found)]
    return [Candidate(node_id, s) for s, node_id in registry.ranked(model, limit, exclude, needs)]


def explain(found: list[Candidate]) -> str:
    """The candidate list as one log line."""
    return "; ".join(c.explain() for c in found) or "no candidates"
