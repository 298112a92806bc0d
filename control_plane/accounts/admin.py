"""Admin routes (`/api/v1/admin/...`, admin keys only): accounts, top-ups, prices and node registration."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from control_plane.accounts import service
from control_plane.accounts.auth import Principal, require_admin
from control_plane.accounts.schemas import (
    AccountCreate,
    AccountCreated,
    AccountList,
    AccountUpdate,
    AccountView,
    NodeRegister,
    NodeRegistered,
    TopUp,
    key_view,
)
from control_plane.credits import ledger, prices
from control_plane.credits.pricing import Price
from control_plane.credits.schemas import PriceSet, PriceView, Transaction, transaction_view
from control_plane.errors import Conflict, NotFound
from control_plane.jobs.schemas import iso
from control_plane.nodes.service import register_node
from control_plane.runtime import Runtime
from control_plane.store import Database


async def _account_view(db: Database, row: dict) -> AccountView:
    c = await ledger.account_credits(db, row["id"])
    return AccountView(id=row["id"], name=row["name"], is_active=row["is_active"], created_at=iso(row["created_at"]),
                       balance=c.balance, reserved=c.reserved, available=c.available)


async def _account(db: Database, ref: str) -> dict:
    """An account by id (acct_...) or by name; 404 when neither matches."""
    row = await db.fetchone("get_account", {"id": ref}) if ref.startswith("acct_") else None
    row = row or await db.fetchone("get_account_by_name", {"name": ref})
    if row is None:
        raise NotFound(f"account {ref} not found")
    return row


class AdminController(Controller):
    path = "/api/v1/admin"
    tags = ["admin"]

    @post("/accounts", status_code=201, summary="Create an account with its opening grant and first key")
    async def create_account(self, data: JSONBody[AccountCreate], principal: NamedDependency[Principal],
                             runtime: NamedDependency[Runtime]) -> AccountCreated:
        require_admin(principal, "creating accounts")
        credits = runtime.settings.signup_credits if data.credits is None else data.credits
        row = await service.create_account(runtime.db, data.name, credits=credits)
        if row is None:
            raise Conflict(f"an account named {data.name} already exists")
        created = await service.create_key(runtime.db, row["id"], name=data.key_name, admin=data.admin)
        return AccountCreated(account=await _account_view(runtime.db, row), key=key_view(created.row, key=created.key))

    @get("/accounts", summary="Every account with its credits")
    async def list_accounts(
        self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime],
        limit: Annotated[int | None, QueryParameter(ge=1, le=1000, description="1-1000, default 100")] = None,
    ) -> AccountList:
        require_admin(principal, "listing accounts")
        rows = await runtime.db.fetchall("list_accounts", {"limit": max(1, min(limit or 100, 1000))})
        return AccountList(accounts=[await _account_view(runtime.db, r) for r in rows])

    @get("/accounts/{account:str}", summary="One account (by id or name) with its credits")
    async def get_account(self, account: FromPath[str], principal: NamedDependency[Principal],
                          runtime: NamedDependency[Runtime]) -> AccountView:
        require_admin(principal, "reading accounts")
        return await _account_view(runtime.db, await _account(runtime.db, account))

    @patch("/accounts/{account:str}", summary="Deactivate or reactivate an account (all its keys at once)")
    async def update_account(self, account: FromPath[str], data: JSONBody[AccountUpdate],
                             principal: NamedDependency[Principal], runtime: NamedDependency[Runtime]) -> AccountView:
        require_admin(principal, "changing accounts")
        target = (await _account(runtime.db, account))["id"]
        if target == principal.account_id and not data.is_active:
            raise Conflict("an admin key cannot deactivate its own account (it would lock itself out); "
                           "use an admin key of another account")
        row = await service.set_account_active(runtime.db, target, data.is_active)
        await runtime.key_events.invalidate(account_id=row["id"])
        return await _account_view(runtime.db, row)

    @post("/accounts/{account:str}/credits", status_code=201, summary="Top up an account (a deposit entry)")
    async def top_up(self, account: FromPath[str], data: JSONBody[TopUp], principal: NamedDependency[Principal],
                     runtime: NamedDependency[Runtime]) -> Transaction:
        require_admin(principal, "topping up credits")
        row = await _account(runtime.db, account)
        note = data.note or f"top-up by key {principal.key_id}"
        entry = await ledger.deposit(runtime.db, row["id"], data.amount, note)
        return transaction_view(entry)

    @post("/prices", status_code=200, summary="Set a model's price (credits per 1M input / output tokens)")
    async def set_price(self, data: JSONBody[PriceSet], principal: NamedDependency[Principal],
                        runtime: NamedDependency[Runtime]) -> PriceView:
        require_admin(principal, "setting prices")
        row = await prices.set_price(runtime.db, data.model, Price(data.input_per_mtok, data.output_per_mtok))
        return PriceView(model=row["model"], input_per_mtok=row["input_per_mtok"],
                         output_per_mtok=row["output_per_mtok"], updated_at=iso(row["updated_at"]))

    @delete("/prices", status_code=200, summary="Drop a model's price so the default applies again")
    async def delete_price(
        self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime],
        model: Annotated[str, QueryParameter(description="the model whose price to drop")],
    ) -> PriceView:
        require_admin(principal, "setting prices")
        if not await prices.delete_price(runtime.db, model):
            raise NotFound(f"model {model} has no price of its own")
        default = prices.default_price(runtime.settings)
        return PriceView(model=model, input_per_mtok=default.input_per_mtok, output_per_mtok=default.output_per_mtok)

    @post("/nodes", status_code=201, summary="Register a node (its token is returned once)")
    async def register(self, data: JSONBody[NodeRegister], principal: NamedDependency[Principal],
                            runtime: NamedDependency[Runtime]) -> NodeRegistered:
        require_admin(principal, "registering nodes")
        operator_id = (await _account(runtime.db, data.operator))["id"] if data.operator else None
        node = await register_node(runtime.db, data.name, operator_id, models=tuple(data.models or ()) or None)
        return NodeRegistered(node_id=node.node_id, name=node.name, token=node.token, operator_account_id=operator_id)
