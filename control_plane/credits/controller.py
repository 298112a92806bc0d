"""HTTP routes for the caller's credits, ledger, usage, operator earnings, and the price list."""

from __future__ import annotations

import re
from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from control_plane.accounts import service as accounts
from control_plane.accounts.auth import Principal
from control_plane.credits import ledger, prices
from control_plane.credits import usage as usage_db
from control_plane.credits import usage_cursor
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
    transaction_view,
    usage_record,
)
from control_plane.errors import BadRequest, NotFound
from control_plane.jobs.schemas import iso
from control_plane.lib.timestamps import DATE_TIME_SCHEMA, parse_timestamp
from control_plane.runtime import Runtime


#: A transactions cursor: a ledger entry id (at most 18 digits, so always within bigint).
TRANSACTION_CURSOR = r"^[0-9]{1,18}$"
_KIND = "(" + "|".join(ledger.KINDS) + ")"
#: `kind`: one or more ledger entry kinds, comma-separated.
KIND_LIST = f"^{_KIND}(,{_KIND})*$"


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
        cursor: Annotated[str | None, QueryParameter(description="next_cursor of the previous page",
                                                     pattern=TRANSACTION_CURSOR)] = None,
        kind: Annotated[str | None, QueryParameter(
            description="comma-separated: deposit, reserve, charge, release, refund, payout",
            pattern=KIND_LIST)] = None,
        job_id: Annotated[str | None, QueryParameter(description="entries of one job")] = None,
        since: Annotated[str | None, QueryParameter(description="RFC 3339 date-time, inclusive",
                                                    schema_extra=DATE_TIME_SCHEMA)] = None,
        until: Annotated[str | None, QueryParameter(description="RFC 3339 date-time, exclusive",
                                                    schema_extra=DATE_TIME_SCHEMA)] = None,
    ) -> TransactionList:
        limit = page_limit(limit)
        # Litestar checks the patterns with re.search, whose `$` also matches before a final newline: whole strings.
        if kind is not None and not re.fullmatch(KIND_LIST, kind):
            raise BadRequest(f"kind must be among {', '.join(ledger.KINDS)}, comma-separated", param="kind")
        if cursor is not None and not re.fullmatch(TRANSACTION_CURSOR, cursor):
            raise BadRequest("cursor must be the next_cursor of a previous page", param="cursor")
        kinds = kind.split(",") if kind is not None else None
        before = int(cursor) if cursor is not None else None  # at most 18 digits: always a bigint
        rows = await ledger.transactions(runtime.db, principal.account_id, limit=limit, before=before, kinds=kinds,
                                         job_id=job_id, since=parse_timestamp(since, "since"),
                                         until=parse_timestamp(until, "until"))
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
        cursor: Annotated[str | None, QueryParameter(description="next_cursor of the previous page",
                                                     pattern=usage_cursor.PATTERN)] = None,
        since: Annotated[str | None, QueryParameter(description="RFC 3339 date-time, inclusive (job creation time)",
                                                    schema_extra=DATE_TIME_SCHEMA)] = None,
        until: Annotated[str | None, QueryParameter(description="RFC 3339 date-time, exclusive",
                                                    schema_extra=DATE_TIME_SCHEMA)] = None,
        model: Annotated[str | None, QueryParameter(description="only this model")] = None,
        key_id: Annotated[str | None, QueryParameter(description="only jobs submitted with this key of yours")] = None,
    ) -> UsageList:
        limit = page_limit(limit)
        if key_id:
            await accounts.get_key(runtime.db, principal.account_id, key_id)  # 404 unless it is the caller's
        before = usage_cursor.decode(cursor) if cursor is not None else None
        rows, sums = await usage_db.usage(runtime.db, principal.account_id, limit=limit, before=before,
                                          since=parse_timestamp(since, "since"), until=parse_timestamp(until, "until"),
                                          model=model or None, key_id=key_id or None)
        totals = Totals(overall=UsageTotals(**sums["overall"]),
                        by_model=[ModelTotals(**m) for m in sums["by_model"]],
                        by_day=[DayTotals(**d) for d in sums["by_day"]])
        next_cursor = usage_cursor.encode(rows[-1]) if len(rows) == limit else None
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
