"""Model prices: admin-set per model, a default (from settings) for every model without one."""

from __future__ import annotations

from control_plane.credits.pricing import Price
from control_plane.settings import Settings
from control_plane.store import Database


def default_price(settings: Settings) -> Price:
    return Price(settings.default_price_input, settings.default_price_output)


async def list_prices(db: Database) -> list[dict]:
    return await db.fetchall("list_model_prices")


async def set_price(db: Database, model: str, price: Price) -> dict:
    """Set (or replace) a model's price; jobs already submitted keep the price they were accepted at."""
    return await db.fetchone("upsert_model_price", {
        "model": model, "input": price.input_per_mtok, "output": price.output_per_mtok,
    })


async def delete_price(db: Database, model: str) -> bool:
    """Drop a model's price so the default applies; False when it had none."""
    return await db.fetchone("delete_model_price", {"model": model}) is not None
