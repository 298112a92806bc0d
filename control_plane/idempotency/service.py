"""Idempotency-Key: the first request with a key claims it in PostgreSQL, then binds the job it created.

The claim is one upsert on (account, key), so two requests racing on different replicas cannot both win:
the loser waits for the winner's job id (bounded) and returns that job. The same key with a different
request is refused (422 idempotency_key_reused). A claim whose request failed before creating a job is
dropped so the client can retry with the same key; a claim left behind by a replica that died is taken
over after `STALE_CLAIM_SECS`. Keys live `idempotency_ttl_hours` (24 h by default).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog

from control_plane.errors import BadRequest, Conflict, InfernetError
from control_plane.settings import Settings
from control_plane.store import Database

log = structlog.get_logger("control_plane.idempotency")

HEADER = "Idempotency-Key"
_VALID = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
#: Seconds after which a claim that never got its job (its replica died mid-request) may be taken over.
STALE_CLAIM_SECS = 30.0
#: How long a request waits for a concurrent request with the same key to create its job.
WAIT_SECS = 10.0


class IdempotencyKeyReused(InfernetError):
    """The key was already used by this account for a different request."""

    code = "idempotency_key_reused"
    status = 422


def fingerprint(endpoint: str, body: Any) -> bytes:
    """SHA-256 of the endpoint and the decoded request body (key order and whitespace do not matter)."""
    canonical = msgspec.json.encode(msgspec.to_builtins(body), order="sorted")
    return hashlib.sha256(endpoint.encode() + b"\n" + canonical).digest()


class Idempotency:
    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._ttl_secs = settings.idempotency_ttl_hours * 3600

    async def submit(self, principal: Any, key: str | None, print_: bytes,
                     create: Callable[[], Awaitable[dict]]) -> tuple[dict, bool]:
        """Run `create` once per (account, key); returns (job row, replayed). No key: just `create`."""
        if key is None:
            return await create(), False
        if not _VALID.match(key):
            raise BadRequest(f"{HEADER} must be 1-255 printable ASCII characters without spaces", param=HEADER)
        params = {"account_id": principal.account_id, "key": key, "fingerprint": print_,
                  "ttl_secs": self._ttl_secs, "stale_secs": STALE_CLAIM_SECS}
        if await self._db.fetchone("idempotency_claim", params) is not None:
            try:
                row = await create()
            except BaseException:
                await self._db.execute("idempotency_release", params)
                raise
            await self._db.execute("idempotency_bind", params | {"job_id": row["id"]})
            return row, False
        return await self._replay(principal, key, print_), True

    async def _replay(self, principal: Any, key: str, print_: bytes) -> dict:
        params = {"account_id": principal.account_id, "key": key}
        delay, waited = 0.01, 0.0
        while True:
            held = await self._db.fetchone("idempotency_get", params)
            if held is None:  # the first request failed and released it just now: the client should retry
                raise Conflict(f"the request with {HEADER} {key!r} failed before creating a job; retry it")
            if bytes(held["fingerprint"]) != print_:
                raise IdempotencyKeyReused(
                    f"{HEADER} {key!r} was already used for a different request in the last "
                    f"{self._ttl_secs / 3600:g} h; use a new key for a new request")
            if held["job_id"] is not None:
                row = await self._db.fetchone("get_job", {"id": held["job_id"], "account_id": principal.account_id})
                if row is None:
                    raise Conflict(f"the job created with {HEADER} {key!r} no longer exists; use a new key")
                log.info("idempotent_replay", job_id=row["id"], key=key)
                return row
            if waited >= WAIT_SECS:
                raise Conflict(f"a request with {HEADER} {key!r} is still being processed; retry shortly",
                               headers={"Retry-After": "1"})
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.5)

    async def forget_expired(self) -> int:
        return await self._db.execute("idempotency_forget", {"ttl_secs": self._ttl_secs})

    async def run(self) -> None:
        """Drop expired keys every few minutes (any replica may; the delete is idempotent)."""
        while True:
            await asyncio.sleep(300)
            try:
                await self.forget_expired()
            except InfernetError as exc:
                log.warning("idempotency_cleanup_failed", error=str(exc))
