"""Creates accounts and API keys (raw key returned once, hash stored)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from control_plane.lib.ids import new_api_key, new_id, secret_hash
from control_plane.store import Database


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: str
    key_id: str
    account_id: str
    prefix: str


async def ensure_account(db: Database, name: str) -> dict:
    """The account called `name`, created if missing."""
    row = await db.fetchone("get_account_by_name", {"name": name})
    if row:
        return row
    return await db.fetchone("insert_account", {"id": new_id("acct"), "name": name})


async def create_key(
    db: Database, account_id: str, *, name: str = "", admin: bool = False, expires_at: datetime | None = None
) -> CreatedKey:
    """Issue a new API key for an account; the raw key exists only in the return value."""
    raw = new_api_key()
    row = await db.fetchone(
        "insert_api_key",
        {"id": new_id("key"), "account_id": account_id, "name": name, "prefix": raw[:12],
         "key_hash": secret_hash(raw), "is_admin": admin, "expires_at": expires_at},
    )
    return CreatedKey(key=raw, key_id=row["id"], account_id=account_id, prefix=row["prefix"])
