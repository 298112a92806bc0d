"""Job use cases: submit (commit, then queue for placement), read one, list an account's jobs."""

from __future__ import annotations

from datetime import datetime

from control_plane.accounts.auth import Principal
from control_plane.credits import ledger
from control_plane.errors import BadRequest, CapabilityUnavailable, Conflict, ModelNotFound, NoCapacity, NotFound
from control_plane.jobs.dispatcher import Dispatcher, QueuedJob
from control_plane.jobs.schemas import JobCreate, request_payload
from control_plane.jobs.sweeper import Sweeper
from control_plane.lib.ids import new_id
from control_plane.scheduler import capabilities as capability_check
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database
from control_plane.store.database import jsonb

JOB_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
#: The request field a capability is needed for (the `param` of a capability_unavailable error).
NEED_PARAMS = {"tools": "tools", "vision": "messages", "logprobs": "logprobs", "logit_bias": "logit_bias",
               "embeddings": "model", "chat": "model"}
NEED_NAMES = {"tools": "tools (function calling)", "vision": "image input (vision)", "logprobs": "logprobs",
              "logit_bias": "logit_bias", "embeddings": "embeddings", "chat": "chat"}


class JobService:
    def __init__(self, db: Database, registry: NodeRegistry, dispatcher: Dispatcher, sweeper: Sweeper,
                 settings: Settings) -> None:
        self._db = db
        self._registry = registry
        self._dispatcher = dispatcher
        self._sweeper = sweeper
        self._settings = settings
        #: Set by the runtime: the gateway steps of a submission (control_plane.jobs.gateway.SubmitGateway).
        self.gateway = None

    def check_routable(self, model: str, pinned: str | None) -> None:
        """Refuse at once what no node could ever run now: unknown model (404) or no accepting node (503)."""
        if not self._sweeper.warm and not self._registry.has_model(model):
            return  # just started: nodes may not have advertised yet, so queue rather than refuse
        if pinned is not None:
            node = self._registry.get(pinned)
            if node is None:
                raise BadRequest(f"node_id {pinned} is not a node on the network", param="node_id")
            if node.state == "offline":
                raise NoCapacity(f"node {pinned} is offline")
            if model not in node.models:
                raise ModelNotFound(f"Model {model} is not available on node {pinned}")
            if node.state == "draining":
                raise NoCapacity(f"node {pinned} is draining and takes no new jobs")
            return
        if not self._registry.has_model(model):
            raise ModelNotFound(f"Model {model} is not registered on the network")
        if not self._registry.accepting(model):
            raise NoCapacity(f"No nodes available with model {model}")

    def check_capable(self, model: str, needs: list[str], pinned: str | None) -> None:
        """Refuse at once (400 capability_unavailable) a job whose needs no accepting node with the model meets."""
        if not self._sweeper.warm and not self._registry.has_model(model):
            return  # just started: the capable node may not have advertised yet
        if pinned is not None:
            node = self._registry.get(pinned)
            info = node.models.get(model) if node is not None else None
            if info is not None and not capability_check.has(info, needs):
                missing = sorted(set(needs) - capability_check.of(info))
                raise CapabilityUnavailable(f"node {pinned} serves {model} without {', '.join(missing)}",
                                            param=NEED_PARAMS.get(missing[0]))
            return
        if self._registry.capable(model, needs):
            return
        missing = sorted(set(needs) - self._registry.capabilities_of(model)) or sorted(needs)
        what = ", ".join(NEED_NAMES.get(n, n) for n in missing)
        raise CapabilityUnavailable(f"no online node serves {model} with {what}; "
                                    "GET /api/v1/nodes shows each model's capabilities",
                                    param=NEED_PARAMS.get(missing[0]))

    async def submit(self, principal: Principal, body: JobCreate, *, request_id: str | None = None,
                     payload: dict | None = None, kind: str = "chat") -> dict:
        payload = payload if payload is not None else request_payload(body)
        for i, message in enumerate(payload.get("messages", ())):
            if "\x00" in message["content"]:  # jsonb cannot store NUL; every entry path (native, /v1) ends here
                raise BadRequest(f"messages[{i}].content contains a NUL character", param=f"messages[{i}].content")
        model = body.model
        if self.gateway is not None:  # rate limit, model "auto", fallback, typed output, webhook: jobs/gateway.py
            model = await self.gateway.prepare(principal, body, payload, kind=kind)
        self.check_routable(model, body.node_id)
        if payload.get("needs"):
            self.check_capable(model, payload["needs"], body.node_id)
        wallclock = body.max_wallclock_secs or self._settings.default_max_wallclock_secs
        job_id = new_id("job")
        # The job row and its credit reservation commit together; without enough credit (402) neither exists.
        async with self._db.transaction() as tx:
            row = await tx.fetchone("insert_job", {
                "id": job_id, "account_id": principal.account_id, "api_key_id": principal.key_id,
                "kind": kind, "model": model, "request": jsonb(payload), "pinned_node_id": body.node_id,
                "claimed_by": self._settings.replica_id, "claim_secs": self._settings.claim_secs,
                "wallclock_secs": wallclock, "request_id": request_id,
            })
            await ledger.reserve(tx, self._settings, account_id=principal.account_id, api_key_id=principal.key_id,
                                 job_id=job_id, model=model, payload=payload, kind=kind)
        self._dispatcher.metrics.jobs_submitted.labels(kind=kind).inc()
        self._dispatcher.enqueue(QueuedJob(
            id=row["id"], model=model, kind=kind, request=payload, deadline=row["deadline"].timestamp(),
            attempt=1, pinned_node_id=body.node_id,
        ))
        return row | {"request": payload}  # callers read the gateway's decisions (routing, fallback) from it

    async def get(self, principal: Principal, job_id: str) -> dict:
        row = None
        if job_id.startswith("job_") and len(job_id) <= 64:
            row = await self._db.fetchone("get_job", {"id": job_id, "account_id": principal.account_id})
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row

    async def cancel(self, principal: Principal, job_id: str) -> dict:
        """Cancel a pending or running job; the node stops generating and a later result is ignored."""
        row = None
        if job_id.startswith("job_") and len(job_id) <= 64:
            row = await self._db.fetchone("cancel_job", {"id": job_id, "account_id": principal.account_id})
        if row is None:
            current = await self.get(principal, job_id)  # 404 when unknown or another account's
            raise Conflict(f"job {job_id} is already {current['status']} and cannot be cancelled")
        self._dispatcher.forget(job_id)
        if row["previous_status"] == "processing" and row["previous_node_id"]:
            await self._dispatcher.cancel_on_node(row["previous_node_id"], job_id, row["previous_attempt"])
        return row

    async def list(self, principal: Principal, *, limit: int | None, status: str | None,
                   since: str | None, model: str | None = None) -> list[dict]:
        limit = 20 if limit is None else limit
        if not 1 <= limit <= 100:
            raise BadRequest("limit must be between 1 and 100", param="limit")
        if status in ("", "all"):
            status = None
        if status is not None and status not in JOB_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(JOB_STATUSES)}", param="status")
        since_ts = None
        if since:
            try:
                since_ts = datetime.fromisoformat(since.replace("Z", "+00:00"))
            except ValueError:
                raise BadRequest(f"since must be an ISO 8601 timestamp, got {since!r}", param="since") from None
            if since_ts.tzinfo is None:
                raise BadRequest("since must include a timezone (e.g. 2026-04-30T14:23:41Z)", param="since")
        params = {"account_id": principal.account_id, "status": status, "since": since_ts, "limit": limit}
        if model:
            return await self._db.fetchall("list_jobs_of_model", params | {"model": model})
        return await self._db.fetchall("list_jobs", params)
