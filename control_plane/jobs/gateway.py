"""The gateway steps of a submission, before its row is written: checks, rate limit, routing, fallback.

`SubmitGateway.prepare` is called by `JobService.submit` for every job (native and `/v1`), so a caller that
fills the JobCreate fields (`model: "auto"`, `routing`, `fallback_models`, `response_schema`, `webhook_url`)
gets all of it; it returns the model to run and adds to the payload what the job row keeps:
`routing` (the decision), `fallback` (chain), `response_schema` (+ `params.format`), `webhook_url`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from control_plane.errors import BadRequest
from control_plane.jobs import typed_output
from control_plane.jobs.dispatcher import Dispatcher
from control_plane.jobs.schemas import JobCreate
from control_plane.jobs.sweeper import Sweeper
from control_plane.ratelimit.limiter import RateLimiter
from control_plane.routing import fallback
from control_plane.routing.pricing import BASE_PRICE, ModelPrice, PriceCache
from control_plane.routing.router import AUTO, Router, estimate_prompt_tokens
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database
from control_plane.webhooks.targets import check_url


class SubmitGateway:
    """Holds the router, the rate limiter and the fallback hook of one replica."""

    def __init__(self, router: Router, limiter: RateLimiter, registry: NodeRegistry, settings: Settings,
                 *, fallback_hook: fallback.Fallback | None = None, warm=lambda: True) -> None:
        self.router = router
        self.limiter = limiter
        self.fallback = fallback_hook
        self.prices: PriceCache | None = None
        self._registry = registry
        self._settings = settings
        self._warm = warm
        self._chains = fallback.parse_chains(settings.fallback_chains)

    @classmethod
    def build(cls, db: Database, registry: NodeRegistry, dispatcher: Dispatcher, sweeper: Sweeper,
              settings: Settings) -> SubmitGateway:
        pool = [m.strip() for m in settings.routing_pool.split(",") if m.strip()]
        prices = PriceCache(db)
        base = ModelPrice(getattr(settings, "default_price_input", BASE_PRICE.input_per_mtok),
                          getattr(settings, "default_price_output", BASE_PRICE.output_per_mtok))
        router = Router(registry, price_lookup=prices.lookup, queue_depth=dispatcher.queued_for, default_pool=pool,
                        default_optimize=settings.routing_optimize, base_price=base)  # type: ignore[arg-type]
        gateway = cls(router, RateLimiter(db, settings), registry, settings,
                      fallback_hook=fallback.Fallback(db, registry), warm=lambda: sweeper.warm)
        gateway.prices = prices
        return gateway

    async def run(self) -> None:
        """Background upkeep: forget old rate-limit windows, refresh the router's prices."""
        tasks = [self.limiter.run()] + ([self.prices.run()] if self.prices is not None else [])
        await asyncio.gather(*tasks)

    async def prepare(self, principal: Any, body: JobCreate, payload: dict[str, Any], *, kind: str = "chat") -> str:
        """Check, count, route; returns the model to run and records the gateway facts in `payload`."""
        if body.response_schema is not None:
            if kind != "chat":
                raise BadRequest("response_schema applies to chat jobs only", param="response_schema")
            schema = typed_output.check_schema(body.response_schema)
            payload["response_schema"] = schema
            payload.setdefault("params", {})["format"] = schema
        if body.webhook_url is not None:
            payload["webhook_url"] = check_url(body.webhook_url, allow_private=self._settings.webhook_allow_private)
        if body.model == AUTO and kind != "chat":
            raise BadRequest('model "auto" routes chat jobs only; name an embedding model', param="model")
        if body.model == AUTO and body.node_id is not None:
            raise BadRequest('node_id pins a job to a node; it cannot be combined with model "auto"', param="node_id")
        max_tokens = int((payload.get("params") or {}).get("max_tokens") or body.max_tokens)
        messages = payload.get("messages") or ()
        prompt = estimate_prompt_tokens(messages) if messages else sum(len(str(i)) // 4 + 1 for i in
                                                                        payload.get("inputs") or ())
        await self.limiter.admit(principal, tokens=prompt + (max_tokens if kind == "chat" else 0))
        model = body.model
        chain = list(body.fallback_models or ())
        if model == AUTO:
            decision = self.router.route(messages, options=body.routing, key_pool=getattr(principal, "model_pool", None),
                                         key_optimize=getattr(principal, "optimize_mode", None), max_tokens=max_tokens,
                                         needs=payload.get("needs") or ())
            payload["routing"] = decision.to_dict()
            model = decision.model
            chain = chain or decision.fallbacks(self._settings.fallback_max_depth)
        else:
            chain = chain or self._chains.get(model, [])
        chain = [m for m in chain if m not in (model, AUTO)][: max(self._settings.fallback_max_depth, 0)]
        if chain and body.node_id is None:
            chosen, depth = fallback.choose(self._registry, model, chain, warm=self._warm())
            payload["fallback"] = {"from": model, "depth": depth, "chain": chain[depth:]}
            model = chosen
        return model
