"""Usage read-backs: per-job usage records with totals per model and day, and operators' node earnings."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from control_plane.store import Database


async def usage(db: Database, account_id: str, *, limit: int, before: dict | None = None,
                since: datetime | None = None, until: datetime | None = None, model: str | None = None,
                key_id: str | None = None) -> tuple[list[dict], dict[str, Any]]:
    """One page of an account's ended jobs (newest first) and the totals of every job the filters match."""
    filters = {"account_id": account_id, "since": since, "until": until, "model": model, "key_id": key_id}
    rows = await db.fetchall("list_usage", filters | {
        "limit": limit, "before_ts": before["created_at"] if before else None,
        "before_id": before["id"] if before else None,
    })
    groups = await db.fetchall("usage_totals", filters)
    return rows, totals(groups)


def totals(groups: list[dict]) -> dict[str, Any]:
    """Fold (model, day) groups into overall totals, per-model totals and per-day totals."""
    fields = ("jobs", "prompt_tokens", "completion_tokens", "credits")
    overall = dict.fromkeys(fields, 0)
    by_model: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    by_day: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    for g in groups:
        for f in fields:
            value = int(g[f])
            overall[f] += value
            by_model[g["model"]][f] += value
            by_day[g["day"].isoformat()][f] += value
    return {
        "overall": overall,
        "by_model": [{"model": m} | v for m, v in sorted(by_model.items())],
        "by_day": [{"day": d} | v for d, v in sorted(by_day.items(), reverse=True)],
    }


async def operator_node_stats(db: Database, account_id: str, node_ids: list[str] | None = None) -> list[dict]:
    """The nodes registered to an operator account (only those of `node_ids` when given): jobs served
    (completed), tokens, credits charged for them, and the operator's earnings (its payout entries) per node.
    For GET /api/v1/nodes (one page of ids) and GET /api/v1/credits/earnings."""
    return await db.fetchall("operator_node_stats", {"account_id": account_id, "node_ids": node_ids})
