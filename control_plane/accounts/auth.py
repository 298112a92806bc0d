"""Resolves `Authorization: Bearer inf_...` to a Principal, with a short in-memory cache."""

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
    """The authenticated caller: which key, which account, what scope."""

    key_id: str
    account_id: str
    is_admin: bool = False


class Authenticator:
    """Checks bearer keys against their stored hashes; caches good answers for a few seconds."""

    def __init__(self, db: Database, *, cache_secs: float = 5.0, clock=time.monotonic) -> None:
        self._db = db
        self._cache_secs = cache_secs
        self._clock = clock
        self._cache: dict[bytes, tuple[float, dict]] = {}

    def invalidate(self, key_id: str | None = None) -> None:
        """Forget cached keys (one, or all) so the next request re-reads the database."""
        if key_id is None:
            self._cache.clear()
        else:
            for digest, (_, row) in list(self._cache.items()):
                if row["key_id"] == key_id:
                    del self._cache[digest]

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer inf_...'")
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
            row = await self._db.fetchone("get_principal_by_key_hash", {"key_hash": digest})
            if row is None or not hmac.compare_digest(bytes(row["key_hash"]), digest):
                raise Unauthorized("invalid or expired bearer token")
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[digest] = (now + self._cache_secs, row)
        if row["revoked_at"] is not None:
            raise Forbidden(f"API key {row['key_id']} was revoked; create a new key")
        if row["expires_at"] is not None and row["expires_at"] <= datetime.now(timezone.utc):
            raise Forbidden(f"API key {row['key_id']} expired at {row['expires_at'].isoformat()}")
        if not row["account_active"]:
            raise Forbidden(f"account {row['account_name']} is deactivated")
        structlog.contextvars.bind_contextvars(account_id=row["account_id"])
        return Principal(key_id=row["key_id"], account_id=row["account_id"], is_admin=row["is_admin"])
