"""Console pages of an API consumer: playground, jobs, keys, credits; every read and write goes through the
same services as /api/v1 with the signed-in key's Principal, so account boundaries are the API's own."""

from __future__ import annotations

from typing import Annotated, TypeVar

from datetime import datetime, timedelta, timezone

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream

from control_plane.accounts import policy
from control_plane.accounts import service as accounts
from control_plane.accounts.schemas import KeyCreate, KeyUpdate, key_view
from control_plane.console import views
from control_plane.console.guard import SECURITY_HEADERS, ConsoleUser, require_csrf
from control_plane.console.pages import convert, optional_int, redirect, render
from control_plane.credits import ledger
from control_plane.credits import usage as usage_db
from control_plane.credits.schemas import transaction_view
from control_plane.errors import BadRequest
from control_plane.jobs.schemas import JobCreate, job_view
from control_plane.jobs.service import JOB_STATUSES
from control_plane.runtime import Runtime
from control_plane.streaming import native

KeyForm = TypeVar("KeyForm", KeyCreate, KeyUpdate)


def filters_of(status: str | None, model: str | None) -> tuple[str | None, str | None]:
    """The jobs filters as the list takes them: a known status or none, a model name or none."""
    status = status if status in JOB_STATUSES else None
    model = (model or "").strip()[:200] or None
    return status, model


async def jobs_table(runtime: Runtime, user: ConsoleUser, status: str | None, model: str | None) -> dict:
    """The context of the jobs table (the page and its live updates)."""
    rows = await runtime.jobs.list(user.principal, limit=50, status=status, since=None, model=model)
    return {"jobs": [job_view(r) for r in rows], "status": status, "model": model}


async def job_panel(runtime: Runtime, user: ConsoleUser, job_id: str) -> dict:
    """A job as its owner sees it (404 for anyone else's), with its ledger entries."""
    row = await runtime.jobs.get(user.principal, job_id)
    entries = await ledger.transactions(runtime.db, user.principal.account_id, limit=20, job_id=row["id"])
    request = row.get("request") or {}
    return {"job": job_view(row), "messages": request.get("messages") or [], "params": request.get("params") or {},
            "entries": [transaction_view(e) for e in entries], "request_id_of_job": row.get("request_id"),
            "partial": (row.get("result") or {}).get("content") if row["status"] in ("failed",) else None,
            "pruned": row.get("content_pruned_at")}


class ConsumerController(Controller):
    path = "/console"

    @get("/playground")
    async def playground(self, request: Request, user: NamedDependency[ConsoleUser],
                         runtime: NamedDependency[Runtime]) -> object:
        models = [m.name for m in runtime.registry.models_summary()]
        return render(request, user, "playground.html", active="playground", models=models)

    @post("/playground/run")
    async def playground_run(self, request: Request, user: NamedDependency[ConsoleUser],
                             runtime: NamedDependency[Runtime]) -> Stream:
        await require_csrf(request, user.csrf)
        form = await request.form()
        prompt = str(form.get("prompt") or "").strip()
        if not prompt:
            raise BadRequest("write a message first", param="prompt")
        messages = []
        if (system := str(form.get("system") or "").strip()):
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        body = convert({"model": str(form.get("model") or "auto"), "messages": messages, "stream": True,
                        "max_tokens": optional_int(form, "max_tokens") or 256}, JobCreate)
        slot = runtime.relay.admit(user.principal.account_id)
        try:
            row = await runtime.jobs.submit(user.principal, body, request_id=request.scope.get("request_id"))
        except BaseException:
            slot.release()
            raise
        response = native.submitted_stream(runtime.relay, slot, row)
        response.headers.update(SECURITY_HEADERS)
        return response

    @get("/jobs")
    async def jobs(self, request: Request, user: NamedDependency[ConsoleUser], runtime: NamedDependency[Runtime],
                   status: Annotated[str | None, QueryParameter(required=False)] = None,
                   model: Annotated[str | None, QueryParameter(required=False)] = None) -> object:
        status, model = filters_of(status, model)
        models = [r["model"] for r in await runtime.db.fetchall("console_account_models",
                                                                {"account_id": user.principal.account_id})]
        return render(request, user, "jobs.html", active="jobs", statuses=JOB_STATUSES, models=models,
                      **await jobs_table(runtime, user, status, model))

    @get("/jobs/{job_id:str}")
    async def job(self, request: Request, job_id: FromPath[str], user: NamedDependency[ConsoleUser],
                  runtime: NamedDependency[Runtime]) -> object:
        return render(request, user, "job.html", active="jobs", **await job_panel(runtime, user, job_id))

    @post("/jobs/{job_id:str}/cancel")
    async def cancel(self, request: Request, job_id: FromPath[str], user: NamedDependency[ConsoleUser],
                     runtime: NamedDependency[Runtime]) -> object:
        await require_csrf(request, user.csrf)
        await runtime.jobs.cancel(user.principal, job_id)
        return redirect(f"/console/jobs/{job_id}")

    @get("/keys")
    async def keys(self, request: Request, user: NamedDependency[ConsoleUser],
                   runtime: NamedDependency[Runtime]) -> object:
        return await _keys_page(request, user, runtime)

    @post("/keys")
    async def create_key(self, request: Request, user: NamedDependency[ConsoleUser],
                         runtime: NamedDependency[Runtime]) -> object:
        await require_csrf(request, user.csrf)
        data = _key_form(await request.form(), KeyCreate)
        # The API's rule (accounts.policy): a non-admin key mints keys no wider than itself.
        bounded = policy.minted_key(user.principal, {"expires_at": None, "rate_limit_rpm": data.rate_limit_rpm,
                                                     "rate_limit_tpm": data.rate_limit_tpm}, runtime.settings)
        created = await accounts.create_key(runtime.db, user.principal.account_id, name=data.name,
                                            model_pool=data.model_pool, optimize_mode=data.optimize_mode, **bounded)
        return await _keys_page(request, user, runtime, created=key_view(created.row, key=created.key), status=201)

    @post("/keys/{key_id:str}")
    async def update_key(self, request: Request, key_id: FromPath[str], user: NamedDependency[ConsoleUser],
                         runtime: NamedDependency[Runtime]) -> object:
        await require_csrf(request, user.csrf)
        data = _key_form(await request.form(), KeyUpdate)
        changes = data.changes()
        await accounts.update_key(runtime.db, user.principal.account_id, key_id, changes,
                                  check=lambda current: policy.check_update(user.principal, current, changes,
                                                                            runtime.settings))
        await runtime.key_events.invalidate([key_id])
        return redirect(f"/console/keys?saved={key_id}")

    @post("/keys/{key_id:str}/revoke")
    async def revoke_key(self, request: Request, key_id: FromPath[str], user: NamedDependency[ConsoleUser],
                         runtime: NamedDependency[Runtime]) -> object:
        await require_csrf(request, user.csrf)
        await accounts.revoke_key(runtime.db, user.principal.account_id, key_id)
        await runtime.key_events.invalidate([key_id])
        return redirect(f"/console/keys?revoked={key_id}")

    @get("/credits")
    async def credits(self, request: Request, user: NamedDependency[ConsoleUser],
                      runtime: NamedDependency[Runtime]) -> object:
        account = user.principal.account_id
        balance = await ledger.account_credits(runtime.db, account)
        entries = await ledger.transactions(runtime.db, account, limit=25)
        since = datetime.now(timezone.utc) - timedelta(days=14)
        _, totals = await usage_db.usage(runtime.db, account, limit=1, since=since)
        per_day, per_model = views.usage_charts(totals)
        return render(request, user, "credits.html", active="credits", balance=balance, totals=totals,
                      entries=[transaction_view(e) for e in entries], per_day=per_day, per_model=per_model)


def _key_form(form, schema: type[KeyForm]) -> KeyForm:
    """The keys page's form (create and edit have the same fields) as the API's request body."""
    return convert({"name": str(form.get("name") or "").strip(), "model_pool": _pool(form),
                    "optimize_mode": form.get("optimize_mode") or "balanced",
                    "rate_limit_rpm": optional_int(form, "rate_limit_rpm"),
                    "rate_limit_tpm": optional_int(form, "rate_limit_tpm")}, schema)


def _pool(form) -> list[str] | None:
    pool = [m.strip() for m in str(form.get("model_pool") or "").replace("\n", ",").split(",") if m.strip()]
    return pool or None


async def _keys_page(request: Request, user: ConsoleUser, runtime: Runtime, *, created=None, status: int = 200):
    rows = await accounts.list_keys(runtime.db, user.principal.account_id)
    return render(request, user, "keys.html", active="keys", keys=[key_view(r) for r in rows], created=created,
                  http_status=status, current_key=user.principal.key_id,
                  saved=request.query_params.get("saved"), revoked=request.query_params.get("revoked"))
