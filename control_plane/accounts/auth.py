"""Resolves `Authorization: Bearer inf_...` to a Principal, with a short in-memory cache.

Keys are looked up by their SHA-256 and the stored hash is compared in constant time; the raw key is never
kept, logged or put in an error. Unknown or missing keys are 401; known keys that may not be used (revoked,
expired, account deactivated) are 403 with a message that says which. Cached answers last
`auth_cache_secs`; revocations and account changes are also broadcast on NATS so every replica drops them
at once (see `accounts.events`).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import structlog

from control_plane.errors import Forbidden, Unauthorized
from control_plane.lib.ids import secret_hash
from control_plane.store import Database


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: which key, which account, what scope, and the key's routing and limits."""

    key_id: str
    account_id: str
    is_admin: bool = False
    model_pool: tuple[str, ...] | None = None
    optimize_mode: str = "balanced"
    rate_limit_rpm: int | None = None
    rate_limit_tpm: int | None = None
    #: When the key's expiry is (None: never); keys it mints expire no later.
    expires_at: datetime | None = None
    #: The key whose rate budget this key also spends (it minted this key, or its minter did); None: its own only.
    budget_key_id: str | None = None
    #: That key's limits (None: the plan default).
    budget_rpm: int | None = None
    budget_tpm: int | None = None


class Authenticator:
    """Checks bearer keys against their stored hashes; caches the key rows for a few seconds."""

    def __init__(self, db: Database, *, cache_secs: float = 2.0, clock=time.monotonic) -> None:
        self._db = db
        self._cache_secs = cache_secs
        self._clock = clock
        self._cache: dict[bytes, tuple[float, dict]] = {}
        self._generation = 0  # bumped by every invalidation: a lookup racing one is not cached

    def invalidate(self, key_id: str | None = None, *, account_id: str | None = None) -> None:
        """Forget cached keys (one key, every key of an account, or all) so the next request re-reads them."""
        self._generation += 1
        if key_id is None and account_id is None:
            self._cache.clear()
            return
        for digest, (_, row) in list(self._cache.items()):
            if row["key_id"] == key_id or row["account_id"] == account_id:
                del self._cache[digest]

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer inf_...' (no key yet? an "
                               "administrator creates one with 'infernet-control-plane keys create --account NAME')")
        scheme, _, raw = authorization.partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not raw:
            raise Unauthorized("malformed Authorization header: expected 'Bearer inf_...'")
        digest = secret_hash(raw)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached and cached[0] > now:
            row = cached[1]
        else:
            generation = self._generation
            row = await self._db.fetchone("get_principal_by_key_hash", {"key_hash": digest})
            if row is None or not hmac.compare_digest(bytes(row["key_hash"]), digest):
                raise Unauthorized("unknown API key: check the key; an administrator creates keys with "
                                   "'infernet-control-plane keys create --account NAME'")
            if generation == self._generation:
                if len(self._cache) > 100_000:
                    self._cache.clear()
                self._cache[digest] = (now + self._cache_secs, row)
        return self._principal(row)

    async def authenticate_key_id(self, key_id: str) -> Principal:
        """The Principal of a key known by id (a console session's key), with the same checks as a bearer key.

        Read fresh each time (no cache): a console session ends as soon as its key is revoked or expires.
        """
        row = await self._db.fetchone("get_principal_by_key_id", {"key_id": key_id})
        if row is None:
            raise Unauthorized("unknown API key: sign in again")
        return self._principal(row)

    @staticmethod
    def _principal(row: dict) -> Principal:
        """403 for keys that may not be used (revoked, expired, account deactivated); else the caller."""
        if row["revoked_at"] is not None:
            raise Forbidden(f"API key {row['key_id']} ({row['prefix']}...) was revoked; use or create another key")
        if row["expires_at"] is not None and row["expires_at"] <= datetime.now(timezone.utc):
            raise Forbidden(f"API key {row['key_id']} ({row['prefix']}...) expired at "
                            f"{row['expires_at'].astimezone(timezone.utc).isoformat()}; create a new key")
        if not row["account_active"]:
            raise Forbidden(f"account {row['account_name']} is deactivated; ask an administrator to reactivate it")
        structlog.contextvars.bind_contextvars(account_id=row["account_id"])
        pool = row.get("model_pool")
        return Principal(
            key_id=row["key_id"], account_id=row["account_id"], is_admin=row["is_admin"],
            model_pool=tuple(pool) if pool is not None else None, optimize_mode=row.get("optimize_mode") or "balanced",
            rate_limit_rpm=row.get("rate_limit_rpm"), rate_limit_tpm=row.get("rate_limit_tpm"),
            expires_at=row["expires_at"], budget_key_id=row.get("budget_key_id"), budget_rpm=row.get("budget_rpm"),
            budget_tpm=row.get("budget_tpm"),
        )


def require_admin(principal: Principal, action: str) -> None:
    """403 unless the key has the admin scope."""
    if not principal.is_admin:
        raise Forbidden(f"{action} needs an admin key (created with 'infernet-control-plane keys create --admin')")
