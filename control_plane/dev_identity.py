"""The dev stack's admin key and node token, kept under its data directory so a repeated `make up` reuses them
(instead of adding another admin key and another `dev-node` that then stays listed offline)."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from pathlib import Path

from control_plane.accounts.service import create_key, ensure_account
from control_plane.lib.ids import secret_hash
from control_plane.nodes.service import register_node, set_node_models
from control_plane.store import Database
from control_plane.store.migrate import apply_migrations
from protocol.identity import node_id_from_token

FILE = "dev-identity.json"


async def _still_valid(db: Database, key: str, token: str) -> bool:
    row = await db.fetchone("get_principal_by_key_hash", {"key_hash": secret_hash(key)})
    if row is None or row["revoked_at"] is not None or not row["account_active"] or not row["is_admin"]:
        return False
    node_id = node_id_from_token(token)
    node = await db.fetchone("get_node_token_hash", {"id": node_id}) if node_id else None
    return node is not None and hmac.compare_digest(bytes(node["token_hash"]), secret_hash(token))


async def dev_identity(db_url: str, root: Path, *, credits: int) -> tuple[str, str]:
    """(admin key, node token) of the dev stack: the saved ones while the database still accepts them, else new."""
    await asyncio.to_thread(apply_migrations, db_url)
    path = root / FILE
    db = await Database.open(db_url, min_size=1, max_size=2)
    try:
        try:
            saved = json.loads(path.read_text())
            if await _still_valid(db, saved["key"], saved["node_token"]):
                # The stack's own node is the network's root of trust for every model (a node registered
                # before models were verified has no patterns, which now means "measure every claim").
                await set_node_models(db, node_id_from_token(saved["node_token"]), ("*",), by_name=False)
                return saved["key"], saved["node_token"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or unreadable: make new ones
        account = await ensure_account(db, "dev", credits=credits)
        key = (await create_key(db, account["id"], name="dev stack", admin=True)).key
        # The stack's own node: its models are served without a check and are what other nodes' claims are
        # measured against (control_plane/trust/claims.py).
        token = (await register_node(db, "dev-node", account["id"], models=("*",))).token
    finally:
        await db.close()
    path.write_text(json.dumps({"key": key, "node_token": token}))
    os.chmod(path, 0o600)
    return key, token
