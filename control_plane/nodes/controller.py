"""`/api/v1/nodes`: the network as any caller may see it, and remote drain for admins."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from msgspec import Struct

import protocol
from control_plane.accounts.auth import Principal
from control_plane.credits.usage import operator_node_stats
from control_plane.errors import Forbidden, NotFound
from control_plane.jobs.schemas import iso
from control_plane.runtime import Runtime
from protocol import subjects


class NodeModel(Struct):
    id: str
    loaded: bool
    tokens_per_second: float | None
    embeddings: bool


class OperatorStats(Struct):
    """Shown only to the node's own operator account."""

    jobs_served: int
    prompt_tokens: int
    completion_tokens: int
    credits_charged: int
    earnings: int


class NodeEntry(Struct, omit_defaults=True):
    id: str
    name: str | None
    state: str
    engine: str | None
    models: list[NodeModel]
    slots: int
    active_jobs: int
    last_seen: str | None
    labels: dict[str, str]
    operator: OperatorStats | None = None


class NodeList(Struct):
    nodes: list[NodeEntry]


class DrainAccepted(Struct):
    node_id: str
    state: str


class NodesController(Controller):
    path = "/api/v1/nodes"
    tags = ["nodes"]

    @get("/", summary="The nodes of the network: state, models, tokens/sec, slots")
    async def list_nodes(self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime]) -> NodeList:
        rows = {r["id"]: r for r in await runtime.db.fetchall("node_names")}
        now_wall = datetime.now(timezone.utc)
        now_mono = runtime.registry_clock()
        entries = []
        for view in runtime.registry.nodes():
            row = rows.pop(view.node_id, None)
            last_seen = now_wall - timedelta(seconds=max(0.0, now_mono - view.last_seen))
            entries.append(NodeEntry(
                id=view.node_id, name=row["name"] if row else None, state=view.state, engine=view.engine,
                models=[NodeModel(m.name, m.loaded, m.tokens_per_second, m.embeddings) for m in view.models.values()],
                slots=view.slots, active_jobs=view.estimated_active, last_seen=iso(last_seen), labels=dict(view.labels),
            ))
        for row in rows.values():  # registered but not heard by this replica recently
            entries.append(NodeEntry(id=row["id"], name=row["name"], state="offline", engine=None, models=[], slots=0,
                                     active_jobs=0, last_seen=iso(row["last_seen_at"]), labels={}))
        mine = {r["node_id"]: r for r in await operator_node_stats(runtime.db, principal.account_id)}
        for entry in entries:
            stats = mine.get(entry.id)
            if stats is not None:
                entry.operator = OperatorStats(
                    jobs_served=int(stats["jobs_served"] or 0), prompt_tokens=int(stats["prompt_tokens"] or 0),
                    completion_tokens=int(stats["completion_tokens"] or 0),
                    credits_charged=int(stats["credits_charged"] or 0), earnings=int(stats["earnings"] or 0))
        entries.sort(key=lambda e: e.id)
        return NodeList(nodes=entries)

    @post("/{node_id:str}/drain", status_code=202, summary="Drain a node (admin): no new jobs, in-flight ones finish")
    async def drain(self, node_id: FromPath[str], principal: NamedDependency[Principal],
                    runtime: NamedDependency[Runtime]) -> DrainAccepted:
        if not principal.is_admin:
            raise Forbidden("draining a node needs an admin key")
        if runtime.registry.get(node_id) is None:
            raise NotFound(f"node {node_id} is not on the network")
        runtime.registry.set_draining(node_id)
        await runtime.bus.publish(subjects.node_drain(node_id), protocol.Drain(node_id, "admin request"))
        return DrainAccepted(node_id=node_id, state="draining")
