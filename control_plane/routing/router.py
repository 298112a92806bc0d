"""The router: pool and mode from the request, the key or the defaults; classify; score on live data; decide."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from control_plane.errors import CapabilityUnavailable, ModelNotFound
from control_plane.routing import network, pricing
from control_plane.routing.classifier import Classification, classify
from control_plane.routing.profiles import profile
from control_plane.routing.schemas import OPTIMIZE_MODES, Optimize, RoutingDecision, RoutingOptions
from control_plane.routing.scorer import score_pool
from control_plane.scheduler.registry import NodeRegistry

log = structlog.get_logger("control_plane.routing")

#: The model name that asks for smart routing.
AUTO = "auto"
CHARS_PER_TOKEN = 4


def estimate_prompt_tokens(messages: Iterable[Any]) -> int:
    """About how many tokens a conversation is (4 characters a token, plus a few per message)."""
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", "")
        total += len(content or "") // CHARS_PER_TOKEN + 4
    return max(total, 1)


class Router:
    """Picks a model for `model: "auto"` requests; pure and in memory, safe to call on the request path."""

    def __init__(self, registry: NodeRegistry, *, price_lookup: pricing.PriceLookup | None = None,
                 queue_depth: Callable[[str], int] | None = None, default_pool: Sequence[str] = (),
                 default_optimize: Optimize = "balanced", base_price: pricing.ModelPrice = pricing.BASE_PRICE,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._registry = registry
        self.price_lookup = price_lookup
        self._base_price = base_price
        self._queue_depth = queue_depth
        self._default_pool = tuple(default_pool)
        self._default_optimize: Optimize = default_optimize if default_optimize in OPTIMIZE_MODES else "balanced"
        self._clock = clock

    def pool(self, options: RoutingOptions | None, key_pool: Sequence[str] | None) -> list[str]:
        """The models to choose from: the request's pool, else the key's, else the configured default, else every
        chat model the network serves now."""
        chosen = (options.model_pool if options and options.model_pool else None) or key_pool or self._default_pool
        if not chosen:
            chosen = [m for m in self._registry.model_names() if m != AUTO]
        seen: dict[str, None] = {}
        for model in chosen:
            if model != AUTO and profile(model).chat:
                seen.setdefault(model, None)
        return list(seen)

    def route(self, messages: Sequence[Any], *, options: RoutingOptions | None = None,
              key_pool: Sequence[str] | None = None, key_optimize: str | None = None,
              max_tokens: int = 512, needs: Sequence[str] = ()) -> RoutingDecision:
        """Classify the conversation and choose the best-scoring available model of the pool (with `needs`: among
        the models some online node serves with those capabilities: tools, vision ...)."""
        started = self._clock()
        optimize: Optimize = (options.optimize if options and options.optimize else None) or (
            key_optimize if key_optimize in OPTIMIZE_MODES else None) or self._default_optimize
        found = classify(messages)
        source = "classifier"
        if options is not None and options.task is not None and options.task != found.task:
            found = Classification(options.task, found.complexity, 1.0)
            source = "request"
        models = self.pool(options, key_pool)
        if not models:
            raise ModelNotFound("no chat model to route to: the routing pool is empty and no node serves a model;"
                                " pass routing.model_pool or a model name")
        if needs:
            models = [m for m in models if self._registry.capable(m, needs)]
            if not models:
                raise CapabilityUnavailable(f"no model of the routing pool is served with {', '.join(needs)} by an "
                                            "online node", param="tools" if "tools" in needs else "model")
        lives = [network.live(self._registry, m, self._queue_depth) for m in models]
        prices = {lv.model: pricing.resolve(self.price_lookup, lv.model, lv.advertised_price, self._base_price)
                  for lv in lives if lv.status != "unavailable"}
        prompt_tokens = estimate_prompt_tokens(messages)
        scored = score_pool(found, lives, prices, optimize=optimize, prompt_tokens=prompt_tokens,
                            max_tokens=max_tokens)
        if not scored or scored[0].status == "unavailable":
            raise ModelNotFound(f"no model of the routing pool ({', '.join(models)}) is served by an online node;"
                                " retry later or widen routing.model_pool")
        elapsed = round((self._clock() - started) * 1000, 3)
        decision = RoutingDecision(
            model=scored[0].model, task=found.task, complexity=found.complexity, confidence=found.confidence,
            optimize=optimize, routing_time_ms=elapsed, task_source=source, pool=models, candidates=scored,
        )
        log.info("model_routed", model=decision.model, task=decision.task, complexity=decision.complexity,
                 confidence=decision.confidence, optimize=optimize, routing_time_ms=elapsed)
        return decision
