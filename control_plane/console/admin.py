"""Console pages of an admin: the network at a glance, accounts (create, grant credits), nodes (register,
drain, revoke). Each action checks the admin scope with the API's own `require_admin` and uses the same services."""

from __future__ import annotations

from urllib.parse import quote

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from control_plane.accounts import service as accounts
from control_plane.accounts.auth import require_admin
from control_plane.accounts.schemas import AccountCreate, NodeRegister, TopUp, key_view
from control_plane.console import views
from control_plane.console.guard import ConsoleUser, require_csrf
from control_plane.console.operator import node_command
from control_plane.console.pages import ConsoleState, convert, optional_int, redirect, render
from control_plane.credits import ledger
from control_plane.errors import Conflict, NotFound
from control_plane.nodes.revocation import revoke_everywhere
from control_plane.nodes.service import register_node
from control_plane.runtime import Runtime


async def _account(runtime: Runtime, ref: str) -> dict:
    row = await runtime.db.fetchone("get_account", {"id": ref}) if ref.startswith("acct_") else None
    row = row or await runtime.db.fetchone("get_account_by_name", {"name": ref})
    if row is None:
        raise NotFound(f"account {ref} not found")
    return row


async def _accounts(runtime: Runtime) -> list[dict]:
    out = []
    for row in await runtime.db.fetchall("list_accounts", {"limit": 500}):
        c = await ledger.account_credits(runtime.db, row["id"])
        out.append(row | {"balance": c.balance, "reserved": c.reserved, "available": c.available})
    return out


async def admin_nodes_context(runtime: Runtime) -> dict:
    rows = await views.all_nodes(runtime)
    return {"nodes": rows, "can_drain": True, "can_revoke": True, "back": "admin"}


class AdminConsoleController(Controller):
    path = "/console/admin"

    @get("/")
    async def overview(self, request: Request, user: NamedDependency[ConsoleUser], runtime: NamedDependency[Runtime],
                       console: NamedDependency[ConsoleState]) -> object:
        require_admin(user.principal, "the network overview")
        return render(request, user, "admin_overview.html", active="admin",
                      o=await views.overview(runtime, console.history))

    @get("/accounts")
    async def accounts_page(self, request: Request, user: NamedDependency[ConsoleUser],
                            runtime: NamedDependency[Runtime]) -> object:
        require_admin(user.principal, "listing accounts")
        return render(request, user, "admin_accounts.html", active="accounts", accounts=await _accounts(runtime),
                      granted=request.query_params.get("granted"), signup=runtime.settings.signup_credits)

    @post("/accounts")
    async def create_account(self, request: Request, user: NamedDependency[ConsoleUser],
                             runtime: NamedDependency[Runtime]) -> object:
        await require_csrf(request, user.csrf)
        require_admin(user.principal, "creating accounts")
        form = await request.form()
        data = convert({"name": str(form.get("name") or "").strip(), "credits": optional_int(form, "credits"),
                        "key_name": str(form.get("key_name") or "").strip()}, AccountCreate)
        credits = runtime.settings.signup_credits if data.credits is None else data.credits
        row = await accounts.create_account(runtime.db, data.name, credits=credits)
        if row is None:
            raise Conflict(f"an account named {data.name} already exists")
        created = await accounts.create_key(runtime.db, row["id"], name=data.key_name)
        return render(request, user, "admin_accounts.html", active="accounts", http_status=201,
                      accounts=await _accounts(runtime), created_account=row["name"],
                      created_key=key_view(created.row, key=created.key), signup=runtime.settings.signup_credits)

    @post("/accounts/{account:str}/credits")
    async def grant(self, request: Request, account: FromPath[str], user: NamedDependency[ConsoleUser],
                    runtime: NamedDependency[Runtime]) -> object:
        await require_csrf(request, user.csrf)
        require_admin(user.principal, "topping up credits")
        form = await request.form()
        data = convert({"amount": optional_int(form, "amount"), "note": str(form.get("note") or "").strip() or None},
                       TopUp)
        row = await _account(runtime, account)
        await ledger.deposit(runtime.db, row["id"], data.amount,
                             data.note or f"top-up by key {user.principal.key_id} (console)")
        return redirect(f"/console/admin/accounts?granted={row['name']}")

    @get("/nodes")
    async def nodes(self, request: Request, user: NamedDependency[ConsoleUser],
                    runtime: NamedDependency[Runtime]) -> object:
        require_admin(user.principal, "listing every node")
        return render(request, user, "admin_nodes.html", active="admin-nodes",
                      revoked=request.query_params.get("revoked"), **await admin_nodes_context(runtime))

    @post("/nodes/{node_id:str}/revoke")
    async def revoke(self, request: Request, node_id: FromPath[str], user: NamedDependency[ConsoleUser],
                     runtime: NamedDependency[Runtime]) -> object:
        await require_csrf(request, user.csrf)
        require_admin(user.principal, "revoking nodes")
        revoked = await revoke_everywhere(runtime, node_id)
        return redirect(f"/console/admin/nodes?revoked={quote(revoked.name)}")

    @post("/nodes")
    async def register(self, request: Request, user: NamedDependency[ConsoleUser],
                       runtime: NamedDependency[Runtime]) -> object:
        await require_csrf(request, user.csrf)
        require_admin(user.principal, "registering nodes")
        form = await request.form()
        data = convert({"name": str(form.get("name") or "").strip(),
                        "operator": str(form.get("operator") or "").strip() or None}, NodeRegister)
        operator_id = (await _account(runtime, data.operator))["id"] if data.operator else None
        node = await register_node(runtime.db, data.name, operator_id)
        return render(request, user, "admin_nodes.html", active="admin-nodes", http_status=201, registered=node,
                      operator=data.operator, command=node_command(runtime, node.token),
                      **await admin_nodes_context(runtime))
