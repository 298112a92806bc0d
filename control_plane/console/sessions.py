"""Console sessions in PostgreSQL: a random cookie token (stored hashed) -> the API key it signed in with.

The session holds the key's id, never the key: each request re-checks that key through the same
Authenticator as the API, so a revoked or expired key (or a deactivated account) ends its sessions at once,
on every replica. One-time login links work the same way and are spent on first use.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from control_plane.lib.ids import secret_hash
from control_plane.store import Database

#: How long a console session lasts from sign-in.
SESSION_TTL_S = 12 * 3600
#: How long a one-time login link stays valid if nobody opens it.
LOGIN_LINK_TTL_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    """A live session: the key it acts as, its CSRF token and the account's name (for the header)."""

    token: str
    key_id: str
    csrf_token: str
    account_name: str


class SessionStore:
    """Opens, reads and ends console sessions; issues and redeems one-time login links."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def open(self, key_id: str) -> tuple[str, str]:
        """A new session for the key: (cookie token, CSRF token)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        await self._db.fetchone("console_session_create", {
            "token_hash": secret_hash(token), "key_id": key_id, "csrf_token": csrf, "ttl_secs": SESSION_TTL_S})
        return token, csrf

    async def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 128:
            return None
        row = await self._db.fetchone("console_session_get", {"token_hash": secret_hash(token)})
        if row is None:
            return None
        return Session(token=token, key_id=row["key_id"], csrf_token=row["csrf_token"],
                       account_name=row["account_name"])

    async def close(self, token: str | None) -> None:
        if token and len(token) <= 128:
            await self._db.execute("console_session_delete", {"token_hash": secret_hash(token)})

    async def purge(self) -> int:
        row = await self._db.fetchone("console_sessions_purge")
        return int(row["purged"]) if row else 0

    async def create_login_link(self, key_id: str, *, ttl_secs: int = LOGIN_LINK_TTL_S) -> str:
        """A one-time token for /console/login/{token}: opens a session for the key once."""
        token = secrets.token_urlsafe(32)
        await self._db.fetchone("console_login_link_create",
                                {"token_hash": secret_hash(token), "key_id": key_id, "ttl_secs": ttl_secs})
        return token

    async def redeem_login_link(self, token: str) -> str | None:
        """The link's key id the first time it is used (before it expires); None afterwards."""
        if not token or len(token) > 128:
            return None
        row = await self._db.fetchone("console_login_link_redeem", {"token_hash": secret_hash(token)})
        return row["key_id"] if row else None


async def login_link_token(database_url: str, raw_key: str) -> str:
    """A one-time sign-in token for an API key, made outside a running control plane (the dev stack's banner)."""
    db = await Database.open(database_url, min_size=1, max_size=1)
    try:
        row = await db.fetchone("get_principal_by_key_hash", {"key_hash": secret_hash(raw_key)})
        if row is None:
            raise ValueError("no such API key")
        return await SessionStore(db).create_login_link(row["key_id"])
    finally:
        await db.close()
