"""Accounts and API keys: create (with the sign-up grant), list, update, revoke, deactivate.

The raw key exists only in the return value of `create_key`; the database keeps its SHA-256.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from control_plane.errors import Conflict, NotFound
from control_plane.lib.ids import new_api_key, new_id, secret_hash
from control_plane.settings import Settings
from control_plane.store import Database

#: The sign-up grant when the caller does not pass one (the settings default).
DEFAULT_SIGNUP_CREDITS = Settings.__dataclass_fields__["signup_credits"].default
OPTIMIZE_MODES = ("balanced", "quality", "cost", "latency")


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: str
    key_id: str
    account_id: str
    prefix: str
    row: dict | None = None


async def create_account(db: Database, name: str, *, credits: int | None = None) -> dict | None:
    """Create an account with its opening grant (default: the sign-up grant); None if the name is taken."""
    grant = DEFAULT_SIGNUP_CREDITS if credits is None else credits
    return await db.fetchone("create_account", {"id": new_id("acct"), "name": name, "credits": grant})


async def ensure_account(db: Database, name: str, *, credits: int | None = None) -> dict:
    """The account called `name`, created (with `credits`, default the sign-up grant) if missing.

    The returned row has `created` True when this call made it.
    """
    row = await db.fetchone("get_account_by_name", {"name": name})
    if row:
        return row | {"created": False}
    row = await create_account(db, name, credits=credits)
    if row is None:  # created concurrently by someone else
        return await db.fetchone("get_account_by_name", {"name": name}) | {"created": False}
    return row | {"created": True}


async def create_key(
    db: Database, account_id: str, *, name: str = "", admin: bool = False, expires_at: datetime | None = None,
    model_pool: Sequence[str] | None = None, optimize_mode: str = "balanced", rate_limit_rpm: int | None = None,
    rate_limit_tpm: int | None = None, budget_key_id: str | None = None,
) -> CreatedKey:
    """Issue a new API key for an account; the raw key exists only in the return value."""
    raw = new_api_key()
    row = await db.fetchone(
        "insert_api_key",
        {"id": new_id("key"), "account_id": account_id, "name": name, "prefix": raw[:12],
         "key_hash": secret_hash(raw), "is_admin": admin, "expires_at": expires_at,
         "model_pool": list(model_pool) if model_pool is not None else None, "optimize_mode": optimize_mode,
         "rate_limit_rpm": rate_limit_rpm, "rate_limit_tpm": rate_limit_tpm, "budget_key_id": budget_key_id},
    )
    return CreatedKey(key=raw, key_id=row["id"], account_id=account_id, prefix=row["prefix"], row=row)


async def list_keys(db: Database, account_id: str) -> list[dict]:
    return await db.fetchall("list_api_keys", {"account_id": account_id})


async def get_key(db: Database, account_id: str, key_id: str) -> dict:
    """One key of the account; 404 for unknown keys and for other accounts' keys alike."""
    return await _own_key(db, "get_api_key", account_id, key_id)


async def update_key(db: Database, account_id: str, key_id: str, changes: dict,
                     check: Callable[[dict], None] | None = None) -> dict:
    """Apply the given changes (name, model_pool, optimize_mode, rate_limit_rpm/tpm, expires_at).

    `check(current_row)` may refuse them (raises) after the key is found and before anything changes.
    """
    current = await get_key(db, account_id, key_id)
    if current["revoked_at"] is not None:
        raise Conflict(f"API key {key_id} is revoked and cannot be changed; create a new key")
    if check is not None:
        check(current)
    params: dict = {"id": key_id, "account_id": account_id}
    for field in ("name", "model_pool", "optimize_mode", "rate_limit_rpm", "rate_limit_tpm", "expires_at"):
        params[f"set_{field}"] = field in changes
        value = changes.get(field)
        params[field] = list(value) if field == "model_pool" and value is not None else value
    row = await db.fetchone("update_api_key", params)
    if row is None:  # revoked meanwhile
        raise Conflict(f"API key {key_id} is revoked and cannot be changed; create a new key")
    return row


async def revoke_key(db: Database, account_id: str, key_id: str) -> dict:
    """Revoke a key at once (idempotent); callers broadcast the invalidation to every replica."""
    return await _own_key(db, "revoke_api_key", account_id, key_id)


async def _own_key(db: Database, query: str, account_id: str, key_id: str) -> dict:
    """The row `query` returns for one of the account's keys; 404 for unknown keys and other accounts' keys alike
    (an id that cannot be a key's never reaches the database)."""
    row = None
    if key_id.startswith("key_") and len(key_id) <= 64:
        row = await db.fetchone(query, {"id": key_id, "account_id": account_id})
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    return row


async def set_account_active(db: Database, account_id: str, active: bool) -> dict:
    row = await db.fetchone("set_account_active", {"id": account_id, "is_active": active})
    if row is None:
        raise NotFound(f"account {account_id} not found")
    return row
