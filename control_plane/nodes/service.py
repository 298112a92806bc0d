"""Registers nodes (token shown once), drains them, checks node tokens (the bus's auth callout), revokes nodes,
and keeps the registrations that bound what nodes advertise."""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import time
from dataclasses import dataclass

import protocol
from control_plane.errors import Forbidden, NotFound
from control_plane.lib.ids import new_id, new_node_token, secret_hash
from control_plane.store import Database
from control_plane.store.database import jsonb
from protocol import subjects
from protocol.identity import node_id_from_token

#: Slots a node may claim unless registered with another limit (`nodes register NAME --max-slots N`).
DEFAULT_MAX_SLOTS = 16


@dataclass(frozen=True, slots=True)
class RegisteredNode:
    node_id: str
    name: str
    token: str


async def register_node(db: Database, name: str, operator_account_id: str | None = None, *,
                        max_slots: int = DEFAULT_MAX_SLOTS, models: tuple[str, ...] | None = None) -> RegisteredNode:
    """Create a node record and return its raw token (only time it exists in clear)."""
    node_id = new_id("node", 6)
    token = new_node_token(node_id)
    await db.fetchone(
        "insert_node",
        {"id": node_id, "name": name, "operator_account_id": operator_account_id, "token_hash": secret_hash(token),
         "max_slots": max_slots, "models": list(models) if models else None},
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


@dataclass(frozen=True, slots=True)
class NodeLogin:
    """The answer to "who is connecting with this token?": a node id and name, or why not."""

    node_id: str | None
    name: str | None = None
    refusal: str | None = None


async def authenticate_token(db: Database, token: str) -> NodeLogin:
    """Check a node token against the nodes table, revocation included (one lookup; connects are rare)."""
    node_id = node_id_from_token(token or "")
    if node_id is None:
        return NodeLogin(None, refusal="not a node token")
    row = await db.fetchone("get_node_token_hash", {"id": node_id})
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), secret_hash(token)):
        return NodeLogin(node_id, refusal="unknown node or wrong token")
    if row["revoked_at"] is not None:
        return NodeLogin(node_id, refusal="node revoked")
    return NodeLogin(node_id, name=row["name"])


async def set_node_models(db: Database, node: str, models: tuple[str, ...] | None, *, by_name: bool = True) -> dict | None:
    """Replace the models an admin trusts a node with (None: none; every claim is then measured); None when no
    such node. Replicas apply it when their cached registration expires (within a minute)."""
    return await db.fetchone("set_node_models", {"node": node, "models": list(models) if models else None,
                                                 "by_name": by_name})


async def revoke_node(db: Database, node: str, *, by_name: bool = True) -> dict | None:
    """Mark a node (its id, or with `by_name` also its name) revoked; None when no such node. Disconnecting it
    is the caller's part."""
    return await db.fetchone("revoke_node", {"node": node, "by_name": by_name})


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """What the registration says about a node: its name, the slots it may claim, the models an admin trusts it
    with (glob patterns, '*' for any; None: none, so every model it claims is measured before it serves it:
    control_plane/trust/claims.py), whether it is revoked."""

    name: str
    max_slots: int
    revoked: bool
    models: tuple[str, ...] | None = None

    def trusts(self, model: str) -> bool:
        """The admin vouched for this model on this node at registration: served without a measurement."""
        return self.models is not None and any(pattern == "*" or fnmatch.fnmatchcase(model, pattern)
                                               for pattern in self.models)


#: `NodeRegistrations.cached` for a node only the database can tell about.
UNKNOWN = object()


class NodeRegistrations:
    """Registrations by node id, remembered for `ttl` (not looked up per advertisement). Nodes not seen yet are
    looked up together: every lookup waiting at the same moment shares one query (after a control-plane start,
    thousands of first advertisements cost a handful of queries)."""

    #: Unregistered node ids remembered at most.
    MAX_UNKNOWN = 10_000

    def __init__(self, db: Database, *, ttl: float = 60.0, negative_ttl: float = 10.0, clock=time.monotonic,
                 max_batch: int = 1000) -> None:
        self._db = db
        self._known: dict[str, tuple[float, NodeEntry]] = {}  # node_id -> (valid until, entry)
        self._unknown_until: dict[str, float] = {}
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._max_batch = max_batch
        self._waiting: dict[str, asyncio.Future] = {}
        self._lookup: asyncio.Task | None = None
        self.queries = 0

    def name_of(self, node_id: str) -> str | None:
        cached = self._known.get(node_id)
        return cached[1].name if cached else None

    def cached(self, node_id: str):
        """The registration from memory: a NodeEntry, None (not registered), or UNKNOWN (ask the database)."""
        now = self._clock()
        cached = self._known.get(node_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._unknown_until.get(node_id, 0.0) > now:
            return None
        return UNKNOWN

    async def lookup(self, node_id: str) -> NodeEntry | None:
        entry = self.cached(node_id)
        if entry is UNKNOWN:
            await self._load(node_id)
            entry = self.cached(node_id)
        return None if entry is UNKNOWN else entry

    async def lookup_many(self, node_ids: list[str]) -> list[NodeEntry | None]:
        """Several registrations with at most one query per batch of ids not in memory."""
        unknown = {node_id for node_id in node_ids if self.cached(node_id) is UNKNOWN}
        if unknown:
            await asyncio.gather(*(self._load(node_id) for node_id in unknown))
        return [None if (e := self.cached(node_id)) is UNKNOWN else e for node_id in node_ids]

    def forget(self, node_id: str) -> None:
        self._known.pop(node_id, None)
        self._unknown_until.pop(node_id, None)

    async def _load(self, node_id: str) -> None:
        """Wait until the node's row was looked up (shared with every other lookup queued meanwhile)."""
        future = self._waiting.get(node_id)
        if future is None:
            future = self._waiting[node_id] = asyncio.get_running_loop().create_future()
            if self._lookup is None or self._lookup.done():
                self._lookup = asyncio.create_task(self._lookups(), name="node-registration-lookups")
        await asyncio.shield(future)

    async def _lookups(self) -> None:
        await asyncio.sleep(0)  # let every lookup of this moment join the first batch
        while self._waiting:
            ids = list(self._waiting)[:self._max_batch]
            futures = [self._waiting.pop(node_id) for node_id in ids]
            try:
                rows = await self._db.fetchall("get_node_registrations", {"ids": jsonb(ids)})
            except Exception as exc:  # StoreError: every waiting lookup fails the same way
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.queries += 1
            now = self._clock()
            for row in rows:
                entry = NodeEntry(row["name"], int(row["max_slots"]), row["revoked_at"] is not None,
                                  tuple(row["models"]) if row["models"] is not None else None)
                self._known[row["id"]] = (now + self._ttl, entry)
                self._unknown_until.pop(row["id"], None)
            for node_id in ids:
                if node_id not in self._known:
                    self._unknown_until.pop(node_id, None)
                    self._unknown_until[node_id] = now + self._negative_ttl
            while len(self._unknown_until) > self.MAX_UNKNOWN:
                del self._unknown_until[next(iter(self._unknown_until))]
            for future in futures:
                if not future.done():
                    future.set_result(None)
