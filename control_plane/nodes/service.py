"""Registers nodes (token shown once), drains them, and verifies the tokens nodes put on their advertisements."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass

import protocol
from control_plane.errors import Forbidden, NotFound
from control_plane.lib.ids import new_id, new_node_token, secret_hash
from protocol import subjects
from control_plane.store import Database
from control_plane.store.database import jsonb
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


async def drain_node(db: Database, registry, bus, principal, node_id: str) -> None:
    """Drain a node: no new jobs, in-flight ones finish. Admins may drain any node, operators their own."""
    if not principal.is_admin:
        row = await db.fetchone("console_node_operator", {"id": node_id}) if node_id.startswith("node_") else None
        if row is None or row["operator_account_id"] != principal.account_id:
            raise Forbidden("draining a node needs an admin key, or a key of the account that operates the node")
    if registry.get(node_id) is None:
        raise NotFound(f"node {node_id} is not on the network")
    registry.set_draining(node_id)
    await bus.publish(subjects.node_drain(node_id), protocol.Drain(node_id, "admin request" if principal.is_admin
                                                                    else "operator request"))


class NodeTokenVerifier:
    """Checks that an advertisement's token belongs to its node id; remembers answers to spare the database.

    Nodes it has not seen yet are looked up together: every check waiting at the same moment shares one
    query (after a control-plane start, thousands of first advertisements cost a handful of queries)."""

    #: Unknown node ids remembered at most (a stranger could make up any number of them).
    MAX_UNKNOWN = 10_000

    def __init__(self, db: Database, *, negative_ttl: float = 10.0, clock=time.monotonic,
                 max_batch: int = 1000) -> None:
        self._db = db
        self._known: dict[str, tuple[bytes, str]] = {}  # node_id -> (token hash, name)
        self._unknown_until: dict[str, float] = {}
        self._accepted: dict[str, str] = {}  # node_id -> the raw token that matched its hash (memory only)
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._max_batch = max_batch
        self._waiting: dict[str, asyncio.Future] = {}  # node ids queued for the next lookup
        self._lookup: asyncio.Task | None = None
        self.queries = 0

    def name_of(self, node_id: str) -> str | None:
        entry = self._known.get(node_id)
        return entry[1] if entry else None

    def cached(self, node_id: str, token: str) -> bool | None:
        """The answer from memory: True or False, or None when only the database can tell."""
        accepted = self._accepted.get(node_id)
        if accepted is not None and token.isascii() and hmac.compare_digest(accepted, token):
            return True  # the token this node proved last time: no parsing or hashing per advertisement
        if node_id_from_token(token) != node_id:
            return False
        entry = self._known.get(node_id)
        if entry is None:
            return False if self._unknown_until.get(node_id, 0.0) > self._clock() else None
        if not hmac.compare_digest(entry[0], secret_hash(token)):
            return False
        self._accepted[node_id] = token
        return True

    async def verify(self, node_id: str, token: str) -> bool:
        ok = self.cached(node_id, token)
        if ok is not None:
            return ok
        await self._load(node_id)
        return bool(self.cached(node_id, token))

    async def verify_many(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """Check several (node id, token) pairs with at most one database query per batch of unknown ids."""
        answers = [self.cached(node_id, token) for node_id, token in pairs]
        unknown = {pairs[i][0] for i, ok in enumerate(answers) if ok is None}
        if unknown:
            await asyncio.gather(*(self._load(node_id) for node_id in unknown))
        return [bool(self.cached(*pairs[i])) if ok is None else ok for i, ok in enumerate(answers)]

    async def _load(self, node_id: str) -> None:
        """Wait until the node's row was looked up (shared with every other check queued meanwhile)."""
        future = self._waiting.get(node_id)
        if future is None:
            future = self._waiting[node_id] = asyncio.get_running_loop().create_future()
            if self._lookup is None or self._lookup.done():
                self._lookup = asyncio.create_task(self._lookups(), name="node-token-lookups")
        await asyncio.shield(future)

    async def _lookups(self) -> None:
        await asyncio.sleep(0)  # let every check of this moment join the first batch
        while self._waiting:
            ids = list(self._waiting)[:self._max_batch]
            futures = [self._waiting.pop(node_id) for node_id in ids]
            try:
                rows = await self._db.fetchall("get_node_token_hashes", {"ids": jsonb(ids)})
            except Exception as exc:  # StoreError: every waiting check fails the same way
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.queries += 1
            for row in rows:
                self._known[row["id"]] = (bytes(row["token_hash"]), row["name"])
            until = self._clock() + self._negative_ttl
            for node_id in ids:
                if node_id not in self._known:
                    self._unknown_until.pop(node_id, None)
                    self._unknown_until[node_id] = until
            while len(self._unknown_until) > self.MAX_UNKNOWN:
                del self._unknown_until[next(iter(self._unknown_until))]
            for future in futures:
                if not future.done():
                    future.set_result(None)
