"""Registers nodes (token shown once) and verifies the tokens nodes put on their advertisements."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from control_plane.lib.ids import new_id, new_node_token, secret_hash
from control_plane.store import Database
from protocol.identity import node_id_from_token


@dataclass(frozen=True, slots=True)
class RegisteredNode:
    node_id: str
    name: str
    token: str


async def register_node(db: Database, name: str, operator_account_id: str | None = None) -> RegisteredNode:
    """Create a node record and return its raw token (only time it exists in clear)."""
    node_id = new_id("node", 6)
    token = new_node_token(node_id)
    await db.fetchone(
        "insert_node",
        {"id": node_id, "name": name, "operator_account_id": operator_account_id, "token_hash": secret_hash(token)},
    )
    return RegisteredNode(node_id=node_id, name=name, token=token)


class NodeTokenVerifier:
    """Checks that an advertisement's token belongs to its node id; remembers answers to spare the database."""

    def __init__(self, db: Database, *, negative_ttl: float = 10.0, clock=time.monotonic) -> None:
        self._db = db
        self._known: dict[str, tuple[bytes, str]] = {}  # node_id -> (token hash, name)
        self._unknown_until: dict[str, float] = {}
        self._negative_ttl = negative_ttl
        self._clock = clock

    def name_of(self, node_id: str) -> str | None:
        entry = self._known.get(node_id)
        return entry[1] if entry else None

    async def verify(self, node_id: str, token: str) -> bool:
        if node_id_from_token(token) != node_id:
            return False
        digest = secret_hash(token)
        entry = self._known.get(node_id)
        if entry is None:
            if self._unknown_until.get(node_id, 0.0) > self._clock():
                return False
            row = await self._db.fetchone("get_node_token_hash", {"id": node_id})
            if row is None:
                self._unknown_until[node_id] = self._clock() + self._negative_ttl
                return False
            entry = (bytes(row["token_hash"]), row["name"])
            self._known[node_id] = entry
        return hmac.compare_digest(entry[0], digest)
