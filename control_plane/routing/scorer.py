"""Scores the models of a pool for one classified prompt on fit, cost and latency, under an optimize mode.

Each component is 0..1, higher is better:

- fit: does the model's capability (from its size and specialities) meet what the task and complexity need?
  Under the need it falls off steeply; `quality` mode also rewards capability beyond the need.
- cost: expected credits (prompt + expected completion at the model's price) relative to the cheapest in the pool.
- latency: expected seconds (queue wait when no node is free + cold load + prefill + generation at the measured
  tokens/sec) relative to the fastest in the pool.

Relative components use 1 / (1 + ln(x / best)): twice the best scores 0.59, ten times 0.3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

from control_plane.routing.classifier import Classification, Complexity, Task
from control_plane.routing.network import ModelLive
from control_plane.routing.pricing import ModelPrice
from control_plane.routing.profiles import profile
from control_plane.routing.schemas import ModelScore, Optimize


class Weights(NamedTuple):
    fit: float
    cost: float
    latency: float
    capability: float  # share of fit that rewards capability beyond the need


WEIGHTS: dict[Optimize, Weights] = {
    "balanced": Weights(0.5, 0.25, 0.25, 0.4),
    "quality": Weights(0.8, 0.1, 0.1, 1.0),
    "cost": Weights(0.35, 0.55, 0.1, 0.2),
    "latency": Weights(0.35, 0.1, 0.55, 0.2),
}
_NEED: dict[Complexity, float] = {"simple": 0.3, "moderate": 0.55, "complex": 0.8}
_TASK_NEED: dict[Task, float] = {"code_generation": 0.05, "math": 0.05, "analysis": 0.05, "creative": 0.0,
                                 "summarization": -0.05, "translation": -0.05, "chat": -0.1}
#: Typical completion length per task (tokens) before the complexity factor; capped by max_tokens.
_TYPICAL_OUTPUT: dict[Task, int] = {"chat": 150, "code_generation": 400, "analysis": 500, "summarization": 200,
                                    "translation": 0, "math": 300, "creative": 400}
_OUTPUT_FACTOR: dict[Complexity, float] = {"simple": 0.6, "moderate": 1.0, "complex": 1.8}
COLD_LOAD_S = 5.0  # a model only on disk must be loaded first
PREFILL_SPEEDUP = 20.0  # prompt tokens are processed this many times faster than generated ones


def need(task: Task, complexity: Complexity) -> float:
    """The capability a task at a complexity asks for (0..1)."""
    return _NEED[complexity] + _TASK_NEED[task]


def expected_output_tokens(task: Task, complexity: Complexity, prompt_tokens: int, max_tokens: int) -> int:
    typical = _TYPICAL_OUTPUT[task] or max(prompt_tokens, 20)  # a translation is about as long as its input
    return max(1, min(max_tokens, int(typical * _OUTPUT_FACTOR[complexity])))


def _relative(value: float, best: float) -> float:
    if value <= best or best <= 0:
        return 1.0
    return 1.0 / (1.0 + math.log(value / best))


def fit_of(model: str, task: Task, complexity: Complexity, capability_weight: float) -> float:
    capability = profile(model).capability_for(task)
    required = need(task, complexity)
    meets = 1.0 if capability >= required else (capability / required) ** 4
    return meets * ((1.0 - capability_weight) + capability_weight * capability)


def expected_seconds(live: ModelLive, prompt_tokens: int, output_tokens: int) -> float:
    tps = max(live.tokens_per_second, 1e-3)
    generate = output_tokens / tps
    wait = 0.0 if live.status == "ready" else (live.queued + 1) * generate
    load = 0.0 if live.loaded else COLD_LOAD_S
    return wait + load + prompt_tokens / (tps * PREFILL_SPEEDUP) + generate


def score_pool(
    classification: Classification, models: Iterable[ModelLive], prices: dict[str, ModelPrice], *,
    optimize: Optimize, prompt_tokens: int, max_tokens: int,
) -> list[ModelScore]:
    """Every model scored, best first (ties: by name); unavailable ones last, unscored."""
    weights = WEIGHTS[optimize]
    task, complexity = classification.task, classification.complexity
    output = expected_output_tokens(task, complexity, prompt_tokens, max_tokens)
    usable, unusable = [], []
    for live in models:
        (usable if live.status != "unavailable" else unusable).append(live)
    costs = {m.model: prices[m.model].cost(prompt_tokens, output) for m in usable}
    seconds = {m.model: expected_seconds(m, prompt_tokens, output) for m in usable}
    best_cost = min(costs.values(), default=0.0)
    best_seconds = min(seconds.values(), default=0.0)
    scored = []
    for live in usable:
        fit = fit_of(live.model, task, complexity, weights.capability)
        cost = _relative(costs[live.model], best_cost)
        latency = _relative(seconds[live.model], best_seconds)
        total = weights.fit * fit + weights.cost * cost + weights.latency * latency
        scored.append(ModelScore(
            model=live.model, status=live.status, score=round(total, 4), fit=round(fit, 4), cost=round(cost, 4),
            latency=round(latency, 4), expected_latency_ms=int(seconds[live.model] * 1000),
            expected_cost=round(costs[live.model], 8),
        ))
    scored.sort(key=lambda s: (-s.score, s.model))
    return scored + [ModelScore(model=m.model, status="unavailable") for m in sorted(unusable, key=lambda m: m.model)]
