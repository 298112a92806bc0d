"""HTTP routes for the caller's credits, ledger, usage, operator earnings, and the price list."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from control_plane.accounts import service as accounts
from control_plane.accounts.auth import Principal
from control_plane.credits import ledger, prices
from control_plane.credits import usage as usage_db
from control_plane.credits.schemas import (
    CreditsView,
    DayTotals,
    EarningsView,
    ModelTotals,
    PriceList,
    PriceView,
    Totals,
    Transaction,
    TransactionList,
    UsageList,
    UsageTotals,
    earnings_view,
    page_limit,
    parse_time,
    transaction_view,
    usage_record,
)
from control_plane.errors import BadRequest, NotFound
from control_plane.jobs.schemas import iso
from control_plane.runtime import Runtime


class CreditsController(Controller):
    path = "/api/v1"
    tags = ["credits"]

    @get("/credits", summary="Your credit balance, reserved credits and what is available")
    async def credits(self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime]) -> CreditsView:
        c = await ledger.account_credits(runtime.db, principal.account_id)
        return CreditsView(balance=c.balance, reserved=c.reserved, available=c.available)

    @get("/credits/transactions", summary="Your credit ledger, newest first")
    async def transactions(
        self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime],
        limit: Annotated[int | None, QueryParameter(ge=1, le=100, description="1-100, default 20")] = None,
        cursor: Annotated[str | None, QueryParameter(description="next_cursor of the previous page")] = None,
        kind: Annotated[str | None, QueryParameter(
            description="comma-separated: deposit, reserve, charge, release, refund, payout")] = None,
        job_id: Annotated[str | None, QueryParameter(description="entries of one job")] = None,
        since: Annotated[str | None, QueryParameter(description="ISO 8601, inclusive")] = None,
        until: Annotated[str | None, QueryParameter(description="ISO 8601, exclusive")] = None,
    ) -> TransactionList:
        limit = page_limit(limit)
        kinds = [k.strip() for k in kind.split(",") if k.strip()] if kind else None
        unknown = sorted(set(kinds or ()) - set(ledger.KINDS))
        if unknown:
            raise BadRequest(f"kind must be among {', '.join(ledger.KINDS)}; got {', '.join(unknown)}", param="kind")
        before = None
        if cursor:
            if not cursor.isdigit() or len(cursor) > 19 or int(cursor) > 2**63 - 1:
                raise BadRequest("cursor must be the next_cursor of a previous page", param="cursor")
            before = int(cursor)
        rows = await ledger.transactions(runtime.db, principal.account_id, limit=limit, before=before, kinds=kinds,
                                         job_id=job_id, since=parse_time(since, "since"),
                                         until=parse_time(until, "until"))
        next_cursor = str(rows[-1]["id"]) if len(rows) == limit else None
        return TransactionList(transactions=[transaction_view(r) for r in rows], next_cursor=next_cursor)

    @get("/credits/transactions/{transaction_id:str}", summary="One entry of your credit ledger")
    async def transaction(self, transaction_id: FromPath[str], principal: NamedDependency[Principal],
                          runtime: NamedDependency[Runtime]) -> Transaction:
        row = None
        if transaction_id.isdigit() and len(transaction_id) <= 18:
            row = await runtime.db.fetchone("get_credit_transaction",
                                            {"id": int(transaction_id), "account_id": principal.account_id})
        if row is None:
            raise NotFound(f"transaction {transaction_id} not found")
        return transaction_view(row)

    @get("/credits/earnings", summary="What the nodes you operate served and earned")
    async def earnings(self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime]) -> EarningsView:
        return earnings_view(await usage_db.operator_node_stats(runtime.db, principal.account_id))

    @get("/usage", summary="Your usage per job, with totals per model and per day")
    async def usage(
        self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime],
        limit: Annotated[int | None, QueryParameter(ge=1, le=100, description="1-100, default 20")] = None,
        cursor: Annotated[str | None, QueryParameter(description="next_cursor of the previous page")] = None,
        since: Annotated[str | None, QueryParameter(description="ISO 8601, inclusive (job creation time)")] = None,
        until: Annotated[str | None, QueryParameter(description="ISO 8601, exclusive")] = None,
        model: Annotated[str | None, QueryParameter(description="only this model")] = None,
        key_id: Annotated[str | None, QueryParameter(description="only jobs submitted with this key of yours")] = None,
    ) -> UsageList:
        limit = page_limit(limit)
        if key_id:
            await accounts.get_key(runtime.db, principal.account_id, key_id)  # 404 unless it is the caller's
        before = None
        if cursor:
            if not cursor.startswith("job_") or len(cursor) > 64:
                raise BadRequest("cursor must be the next_cursor of a previous page", param="cursor")
            before = await runtime.db.fetchone("get_job", {"id": cursor, "account_id": principal.account_id})
            if before is None:
                raise BadRequest("cursor must be the next_cursor of a previous page", param="cursor")
        rows, sums = await usage_db.usage(runtime.db, principal.account_id, limit=limit, before=before,
                                          since=parse_time(since, "since"), until=parse_time(until, "until"),
                                          model=model or None, key_id=key_id or None)
        totals = Totals(overall=UsageTotals(**sums["overall"]),
                        by_model=[ModelTotals(**m) for m in sums["by_model"]],
                        by_day=[DayTotals(**d) for d in sums["by_day"]])
        next_cursor = rows[-1]["id"] if len(rows) == limit else None
        return UsageList(usage=[usage_record(r) for r in rows], totals=totals, next_cursor=next_cursor)

    @get("/prices", summary="Model prices in credits per 1M input and output tokens")
    async def price_list(self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime]) -> PriceList:
        default = prices.default_price(runtime.settings)
        return PriceList(
            default=PriceView(model="*", input_per_mtok=default.input_per_mtok,
                              output_per_mtok=default.output_per_mtok),
            prices=[PriceView(model=r["model"], input_per_mtok=r["input_per_mtok"],
                              output_per_mtok=r["output_per_mtok"], updated_at=iso(r["updated_at"]))
                    for r in await prices.list_prices(runtime.db)],
        )
