"""Response shapes of `/api/v1/credits`, `/api/v1/credits/transactions`, `/api/v1/usage` and `/api/v1/prices`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from msgspec import Meta, Struct

from control_plane.errors import BadRequest
from control_plane.jobs.schemas import iso

PricePerMtok = Annotated[int, Meta(ge=0, le=10**12, description="credits per 1M tokens")]


class CreditsView(Struct):
    """An account's credits: balance is the sum of its ledger, reserved is held by unfinished jobs."""

    balance: int
    reserved: int
    available: int


class Transaction(Struct):
    """One ledger entry: `amount` changes the balance, `held` the reserved credits (available = balance - reserved)."""

    id: str
    kind: str
    amount: int
    held: int
    job_id: str | None
    node_id: str | None
    key_id: str | None
    note: str | None
    created_at: str


class TransactionList(Struct):
    transactions: list[Transaction]
    #: Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: str | None


class UsageRecord(Struct):
    job_id: str
    model: str
    node_id: str | None
    key_id: str | None
    status: str
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    credits: int
    latency_ms: int | None
    ttft_ms: float | None
    created_at: str
    completed_at: str | None


class UsageTotals(Struct):
    jobs: int
    prompt_tokens: int
    completion_tokens: int
    credits: int


class ModelTotals(UsageTotals):
    model: str = ""


class DayTotals(UsageTotals):
    day: str = ""


class Totals(Struct):
    overall: UsageTotals
    by_model: list[ModelTotals]
    by_day: list[DayTotals]


class UsageList(Struct):
    usage: list[UsageRecord]
    #: Totals over every job the filters match (not only this page).
    totals: Totals
    next_cursor: str | None


class PriceView(Struct):
    model: str
    input_per_mtok: int
    output_per_mtok: int
    updated_at: str | None = None


class PriceList(Struct):
    """Prices in credits per 1M tokens; `default` applies to every model not listed."""

    default: PriceView
    prices: list[PriceView]


class PriceSet(Struct, forbid_unknown_fields=True):
    """POST /api/v1/admin/prices body."""

    model: Annotated[str, Meta(min_length=1, max_length=200)]
    input_per_mtok: PricePerMtok
    output_per_mtok: PricePerMtok


class NodeEarnings(Struct):
    node_id: str
    name: str
    jobs_served: int
    prompt_tokens: int
    completion_tokens: int
    credits_charged: int
    earnings: int
    last_seen_at: str | None


class EarningsView(Struct):
    """What an operator's nodes served and earned (payout entries to the operator's account)."""

    nodes: list[NodeEarnings]
    jobs_served: int
    earnings: int


def transaction_view(row: dict[str, Any]) -> Transaction:
    return Transaction(
        id=str(row["id"]), kind=row["kind"], amount=int(row["amount"]), held=int(row["held"]), job_id=row["job_id"],
        node_id=row["node_id"], key_id=row["api_key_id"], note=row["note"], created_at=iso(row["created_at"]),
    )


def usage_record(row: dict[str, Any]) -> UsageRecord:
    prompt, completion = int(row["prompt_tokens"] or 0), int(row["completion_tokens"] or 0)
    latency = None
    if row.get("completed_at") is not None:
        latency = int((row["completed_at"] - row["created_at"]).total_seconds() * 1000)
    ttft = row.get("ttft_ms")
    return UsageRecord(
        job_id=row["id"], model=row["model"], node_id=row["node_id"], key_id=row["api_key_id"], status=row["status"],
        error=row["error"], prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        credits=int(row["credits_charged"] or 0), latency_ms=latency,
        ttft_ms=float(ttft) if isinstance(ttft, (int, float)) else None,
        created_at=iso(row["created_at"]), completed_at=iso(row["completed_at"]),
    )


def earnings_view(rows: list[dict[str, Any]]) -> EarningsView:
    nodes = [NodeEarnings(
        node_id=r["node_id"], name=r["name"], jobs_served=int(r["jobs_served"]), prompt_tokens=int(r["prompt_tokens"]),
        completion_tokens=int(r["completion_tokens"]), credits_charged=int(r["credits_charged"]),
        earnings=int(r["earnings"]), last_seen_at=iso(r["last_seen_at"]),
    ) for r in rows]
    return EarningsView(nodes=nodes, jobs_served=sum(n.jobs_served for n in nodes),
                        earnings=sum(n.earnings for n in nodes))


def page_limit(limit: int | None, default: int = 20, maximum: int = 100) -> int:
    limit = default if limit is None else limit
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit must be between 1 and {maximum}", param="limit")
    return limit
