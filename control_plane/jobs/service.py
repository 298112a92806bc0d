"""Job use cases: submit (one commit, then offer or queue for placement), read one, list an account's jobs."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from control_plane.accounts.auth import Principal
from control_plane.credits import ledger, pricing
from control_plane.errors import (BadRequest, CapabilityUnavailable, Conflict, ContextLengthExceeded, ModelNotFound,
                                  NoCapacity, NotFound, PayloadTooLarge)
from control_plane.jobs.dispatcher import Dispatcher, QueuedJob
from control_plane.jobs.schemas import JobCreate, request_payload
from control_plane.jobs.sweeper import Sweeper
from control_plane.lib.ids import new_id
from control_plane.lib.timestamps import parse_timestamp
from control_plane.scheduler import capabilities as capability_check
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database
from control_plane.store.database import jsonb
from control_plane.trust import usage
from control_plane.trust.tokenizers import TokenCounter

JOB_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
#: What `GET /api/v1/jobs?status=` takes: a status, or all of them.
StatusFilter = Literal["all", "pending", "processing", "completed", "failed", "cancelled"]
#: UTF-8 bytes per token the submit-time context check assumes. Real text averages 3-5 bytes per token, so
#: only a prompt far too long is refused here; the node's engine counts exactly and refuses the rest with the
#: same error (400 context_length_exceeded).
BYTES_PER_TOKEN_AT_MOST = 8
ENDED = ("completed", "failed", "cancelled")
#: Jobs answered before their row was written, remembered for read-your-writes (oldest forgotten first).
_EARLY_KEPT = 20_000
#: How long a read of such a job waits for the recorder before it returns the row as it is.
EARLY_READ_WAIT_S = 5.0
#: The request field a capability is needed for (the `param` of a capability_unavailable error).
NEED_PARAMS = {"tools": "tools", "vision": "messages", "logprobs": "logprobs", "logit_bias": "logit_bias",
               "embeddings": "model", "chat": "model"}
NEED_NAMES = {"tools": "tools (function calling)", "vision": "image input (vision)", "logprobs": "logprobs",
              "logit_bias": "logit_bias", "embeddings": "embeddings", "chat": "chat"}


class JobService:
    def __init__(self, db: Database, registry: NodeRegistry, dispatcher: Dispatcher, sweeper: Sweeper,
                 settings: Settings, *, tokens: TokenCounter | None = None) -> None:
        self._db = db
        self._tokens = tokens  # the control plane's own token counts (prompt bound of a chat job's usage)
        self._registry = registry
        self._dispatcher = dispatcher
        self._sweeper = sweeper
        self._settings = settings
        self._early: dict[str, None] = {}  # job ids answered from their result message, in answer order
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

    def check_context(self, model: str, payload: dict) -> None:
        """Refuse at once (400 context_length_exceeded) a prompt clearly longer than every online node's context."""
        texts = [m["content"] for m in payload.get("messages", ()) if isinstance(m.get("content"), str)]
        if sum(map(len, texts)) * 4 <= 2048 * BYTES_PER_TOKEN_AT_MOST:  # a character is at most 4 UTF-8 bytes
            return  # fits any context worth serving; skips the registry walk on the hot path
        estimate = sum(len(t.encode()) for t in texts) // BYTES_PER_TOKEN_AT_MOST
        largest = self._registry.largest_context_below(model, estimate)
        if largest is not None:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {largest} tokens; the messages are at least {estimate} "
                f"tokens long. Shorten the messages.", param="messages")

    def check_size(self, model: str, kind: str, payload: dict, pinned: str | None) -> None:
        """Refuse at once (413 payload_too_large) a job whose assignment cannot travel to a node in one message."""
        texts = [m.get("content") for m in payload.get("messages", ())] + list(payload.get("inputs", ()))
        if sum(len(t) for t in texts if isinstance(t, str)) * 6 < 64 * 1024 and len(texts) < 1000:
            return  # far below any bus limit (JSON escaping at most sextuples a character): skip encoding it
        job = QueuedJob(id="job_" + "0" * 16, model=model, kind=kind, request=payload, deadline=0.0,
                        pinned_node_id=pinned)
        found = self._dispatcher.oversize(job)
        if found is not None:
            size, limit = found
            raise PayloadTooLarge(f"the job is {size:,} bytes once encoded for a node; the bus carries at most "
                                  f"{limit:,} bytes per message (NATS max_payload): send fewer or shorter messages")

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
        self.check_size(model, kind, payload, body.node_id)
        if kind == "chat":
            self.check_context(model, payload)
        # What the job kind needs comes first, so the refusal names it: "no online node serves X with embeddings".
        self.check_capable(model, ["embeddings" if kind == "embed" else "chat", *(payload.get("needs") or ())],
                           body.node_id)
        payload.pop("usage_bound", None)  # the control plane's own figure only
        if kind == "chat" and self._tokens is not None:
            bound = await usage.request_prompt_bound(self._tokens, model, payload)
            if bound is not None:  # the charge's prompt tokens are capped at it (trust/usage.py, migration 0082)
                payload["usage_bound"] = {"model": model, "prompt": bound}
        wallclock = body.max_wallclock_secs or self._settings.default_max_wallclock_secs
        job_id = new_id("job")
        # With a free node, the row is written already processing there: the attempt needs no commit of its own.
        placed = self._dispatcher.place_now(job_id, model, body.node_id, kind, payload)
        prompt, completion = pricing.estimate_prompt_tokens(payload), pricing.max_completion_tokens(payload, kind)
        settings = self._settings
        try:
            # One statement: the job row and its credit hold commit together; without enough credit (402)
            # neither exists.
            row = await self._db.fetchone("submit_job", {
                "id": job_id, "account_id": principal.account_id, "api_key_id": principal.key_id,
                "kind": kind, "model": model, "request": jsonb(payload), "pinned_node_id": body.node_id,
                "claimed_by": settings.replica_id, "claim_secs": settings.claim_secs,
                "wallclock_secs": wallclock, "request_id": request_id,
                "node_id": placed.node_id if placed else None, "lease": placed.lease if placed else None,
                "prompt_tokens": prompt, "max_tokens": completion,
                "default_input": settings.default_price_input, "default_output": settings.default_price_output,
                "operator_share_bps": settings.operator_share_bps,
            })
            if not row["held"]:
                raise ledger.insufficient(row, model=model, prompt=prompt, completion=completion)
        except BaseException:
            if placed is not None:
                self._dispatcher.unplace(job_id, placed)
            raise
        self._dispatcher.metrics.jobs_submitted.labels(kind=kind).inc()
        job = QueuedJob(id=row["id"], model=model, kind=kind, request=payload, deadline=row["deadline"].timestamp(),
                        attempt=1, pinned_node_id=body.node_id)
        if placed is not None:
            self._dispatcher.offer_placed(job, placed)
        else:
            self._dispatcher.enqueue(job)
        # To the caller the job is pending, no attempt begun, until its node accepts it (as without a placement):
        # streams must take the chunks of attempt 1 as live, not as those of an attempt sent back.
        row["status"], row["attempt"] = "pending", 0
        return row | {"request": payload}  # callers read the gateway's decisions (routing, fallback) from it

    def placement_of(self, job_id: str):
        """The latest attempt of the job this replica placed, if it did (jobs/dispatcher.Placement)."""
        return self._dispatcher.placement_of(job_id)

    def answered_early(self, job_id: str) -> None:
        """A request was answered from the job's result message (jobs/early.py): until the recorder has written
        the row, reads of the job through this replica wait for it (read your writes)."""
        self._early[job_id] = None
        while len(self._early) > _EARLY_KEPT:
            self._early.pop(next(iter(self._early)))

    async def get(self, principal: Principal, job_id: str) -> dict:
        row = None
        if job_id.startswith("job_") and len(job_id) <= 64:
            row = await self._db.fetchone("get_job", {"id": job_id, "account_id": principal.account_id})
        if row is None:
            raise NotFound(f"job {job_id} not found")
        if job_id in self._early:
            [row] = await self._recorded(
                [row], lambda: self._db.fetchone("get_job", {"id": job_id, "account_id": principal.account_id}))
            if row is None:
                raise NotFound(f"job {job_id} not found")
        return row

    async def _recorded(self, rows: list, fetch) -> list:
        """`rows` once none is a job answered early whose row the recorder has not written yet (read your writes):
        `fetch` reads them again (one row or a list) until then, for at most EARLY_READ_WAIT_S."""
        def behind(rows: list) -> bool:
            return any(r is not None and r["id"] in self._early and r["status"] not in ENDED for r in rows)

        delay, give_up = 0.001, time.monotonic() + EARLY_READ_WAIT_S
        while behind(rows) and time.monotonic() < give_up:
            await asyncio.sleep(delay)  # the recorder is a round trip or two behind the answer
            delay = min(delay * 2, 0.05)
            got = await fetch()
            rows = got if isinstance(got, list) else [got]
        for r in rows:
            if r is not None and r["status"] in ENDED:
                self._early.pop(r["id"], None)
        return rows

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
        if status == "all":
            status = None
        if status is not None and status not in JOB_STATUSES:
            raise BadRequest(f"status must be all or one of {', '.join(JOB_STATUSES)}", param="status")
        since_ts = parse_timestamp(since, "since")
        params = {"account_id": principal.account_id, "status": status, "since": since_ts, "limit": limit}
        query, params = ("list_jobs_of_model", params | {"model": model}) if model else ("list_jobs", params)
        rows = await self._db.fetchall(query, params)
        if self._early:
            rows = await self._recorded(rows, lambda: self._db.fetchall(query, params))
        return rows
