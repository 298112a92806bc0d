"""Prices the router compares: admin-set prices, a node's advertised price, else a size-scaled default."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from control_plane.routing.profiles import profile


class ModelPrice(msgspec.Struct, frozen=True):
    """Credits per million input (prompt) and output (completion) tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000


#: Looks up a model's price; None means "no price known" (the default is used).
PriceLookup = Callable[[str], "ModelPrice | None"]


#: The price of a 7B model when nothing else is known (credits per 1M tokens); the default scales with size.
BASE_PRICE = ModelPrice(100_000, 200_000)
_BASE_PARAMS_B = 7.0


def default_price(model: str, base: ModelPrice = BASE_PRICE) -> ModelPrice:
    """A price for a model nobody priced: the server's default price for a 7B model, scaled by parameter count."""
    scale = max(profile(model).params_b, 0.1) / _BASE_PARAMS_B
    return ModelPrice(input_per_mtok=round(base.input_per_mtok * scale, 3),
                      output_per_mtok=round(base.output_per_mtok * scale, 3))


def resolve(lookup: PriceLookup | None, model: str, advertised: float | None = None,
            base: ModelPrice = BASE_PRICE) -> ModelPrice:
    """The price to compare: the lookup's (admin-set), else a node's advertised `price_per_mtok`, else the
    size-scaled default."""
    if lookup is not None:
        found = lookup(model)
        if found is not None:
            return found
    if advertised is not None and advertised >= 0:
        return ModelPrice(advertised, advertised)
    return default_price(model, base)


class PriceCache:
    """Admin-set model prices (the `model_prices` table), refreshed every few seconds for the router's
    synchronous lookup; models without one get None (the router then uses an advertised or default price)."""

    def __init__(self, db, *, refresh_s: float = 10.0) -> None:
        self._db = db
        self._refresh_s = refresh_s
        self._prices: dict[str, ModelPrice] = {}

    def lookup(self, model: str) -> ModelPrice | None:
        return self._prices.get(model)

    async def refresh(self) -> None:
        rows = await self._db.fetchall("list_model_prices")
        self._prices = {r["model"]: ModelPrice(float(r["input_per_mtok"]), float(r["output_per_mtok"])) for r in rows}

    async def run(self) -> None:
        import asyncio

        from control_plane.store import StoreError

        while True:
            try:
                await self.refresh()
            except StoreError:
                pass  # keep the last prices; the next refresh tries again
            await asyncio.sleep(self._refresh_s)
