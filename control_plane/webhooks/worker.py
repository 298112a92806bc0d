"""Delivers queued webhooks: polls due deliveries (FOR UPDATE SKIP LOCKED), POSTs them signed, records each attempt.

A delivery row is written by a trigger in the same transaction that ends its job (migration 0004), so nothing
is lost if a replica dies: any replica's worker picks due rows up; a claim pushes `next_attempt_at` past the
attempt's timeout so no other replica sends the same attempt meanwhile. A 2xx answer delivers it; anything
else is retried after base * 2^(n-1) seconds (capped) until the retry window since the job ended is over.
Targets are resolved at each attempt and the connection is pinned to the checked address, so a DNS answer
cannot point a delivery at a private address after the check.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
import structlog

from control_plane.jobs.schemas import iso, job_view
from control_plane.settings import Settings
from control_plane.store import Database, StoreError
from control_plane.store.database import jsonb
from control_plane.webhooks import signing, targets

log = structlog.get_logger("control_plane.webhooks")

BATCH = 32
MAX_IN_FLIGHT = 32
USER_AGENT = "Infernet-Webhooks/1"


async def account_secret(db: Database, account_id: str) -> dict:
    """The account's webhook signing secret, created on first use."""
    return await db.fetchone("webhook_secret", {"account_id": account_id, "secret": signing.new_secret()})


async def rotate_secret(db: Database, account_id: str) -> dict:
    """Replace the account's signing secret; deliveries from now on are signed with the new one."""
    return await db.fetchone("webhook_secret_rotate", {"account_id": account_id, "secret": signing.new_secret()})


def payload(delivery: dict[str, Any], job: dict[str, Any]) -> bytes:
    """The POST body: the event, the delivery id and the job as GET /api/v1/jobs/{id} shows it."""
    data = msgspec.to_builtins(job_view(job))
    data.pop("webhook", None)
    return msgspec.json.encode({"id": delivery["id"], "type": delivery["event"],
                                "created_at": iso(datetime.now(timezone.utc)), "data": data})


def backoff_secs(attempt: int, base: float, cap: float) -> float:
    """Wait before attempt `attempt + 1`: base, 2*base, 4*base ... capped."""
    return min(base * 2 ** max(attempt - 1, 0), cap)


class WebhookWorker:
    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                         timeout=httpx.Timeout(settings.webhook_timeout_s),
                                         headers={"User-Agent": USER_AGENT})
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        """Poll for due deliveries until cancelled."""
        try:
            while True:
                try:
                    claimed = await self.poll_once()
                except StoreError as exc:
                    log.warning("webhook_poll_failed", error=str(exc), action="retrying")
                    claimed = 0
                if claimed < BATCH:
                    await asyncio.sleep(self._settings.webhook_poll_s)
        finally:
            await self.close()

    async def poll_once(self) -> int:
        free = MAX_IN_FLIGHT - len(self._tasks)
        if free <= 0:
            return 0
        rows = await self._db.fetchall("webhook_claim_due", {
            "limit": min(BATCH, free), "lease_secs": self._settings.webhook_timeout_s + 5})
        for row in rows:
            task = asyncio.create_task(self._deliver(row), name=f"webhook-{row['job_id']}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(rows)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    async def _deliver(self, delivery: dict[str, Any]) -> None:
        number = delivery["attempts_made"]
        bound = log.bind(job_id=delivery["job_id"], delivery_id=delivery["id"], attempt=number)
        started = time.monotonic()
        status_code, error, final = None, None, False
        try:
            job = await self._db.fetchone("get_job_any", {"id": delivery["job_id"]})
            secret = (await account_secret(self._db, delivery["account_id"]))["secret"]
            body = payload(delivery, job)
            status_code = await self._post(delivery, body, secret, number)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except targets.TargetRefused as exc:
            error, final = str(exc), True
        except (httpx.HTTPError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except StoreError as exc:
            bound.warning("webhook_attempt_not_made", error=str(exc), action="retried after the claim lapses")
            return
        except Exception as exc:  # a bug here must not loop silently: record it as the attempt's error
            bound.exception("webhook_attempt_crashed")
            error = f"internal error: {type(exc).__name__}"
        duration = int((time.monotonic() - started) * 1000)
        await self._record(delivery, number, status_code, error, duration, final, bound)

    async def _post(self, delivery: dict[str, Any], body: bytes, secret: str, number: int) -> int:
        parts = urlsplit(delivery["url"])
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await targets.resolve(host, port, allow_private=self._settings.webhook_allow_private)
        netloc = (f"[{address}]" if ":" in address else address) + (f":{parts.port}" if parts.port else "")
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        headers = {
            "Host": parts.netloc.rsplit("@", 1)[-1], "Content-Type": "application/json",
            signing.HEADER: signing.sign(secret, body, int(time.time())),
            "Infernet-Webhook-Id": delivery["id"], "Infernet-Webhook-Attempt": str(number),
            "Infernet-Event": delivery["event"],
        }
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        response = await self._client.post(pinned, content=body, headers=headers, extensions=extensions)
        return response.status_code

    async def _record(self, delivery: dict[str, Any], number: int, status_code: int | None, error: str | None,
                      duration_ms: int, final: bool, bound) -> None:
        s = self._settings
        retry_in = backoff_secs(number, s.webhook_backoff_s, s.webhook_backoff_max_s)
        age = (datetime.now(timezone.utc) - delivery["created_at"]).total_seconds()
        if error is None:
            status = "delivered"
        elif final or age + retry_in > s.webhook_retry_window_s:
            status = "failed"
        else:
            status = "pending"
        attempt = {"attempt": number, "at": iso(datetime.now(timezone.utc)), "status_code": status_code,
                   "error": error, "duration_ms": duration_ms}
        try:
            await self._db.execute("webhook_record", {"job_id": delivery["job_id"], "attempts_made": number,
                                                      "status": status, "attempt": jsonb(attempt), "retry_in": retry_in})
        except StoreError as exc:
            bound.warning("webhook_attempt_not_recorded", error=str(exc))
            return
        if status == "delivered":
            bound.info("webhook_delivered", status_code=status_code)
        elif status == "failed":
            bound.warning("webhook_gave_up", error=error, detail="no more retries for this job's webhook")
        else:
            bound.info("webhook_attempt_failed", error=error, retry_in_s=retry_in)
