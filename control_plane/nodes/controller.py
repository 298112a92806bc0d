"""`/api/v1/nodes`: the network as any caller may see it, a page at a time, and remote drain (admins, or the
node's operator)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter

from control_plane.accounts.auth import Principal
from control_plane.nodes.directory import NodeDirectory, StateFilter
from control_plane.nodes.revocation import revoke_everywhere
from control_plane.nodes.schemas import DrainAccepted, NodeEntry, NodeList, NodeModel, OperatorStats, Revoked
from control_plane.nodes.service import drain_node
from control_plane.runtime import Runtime
from control_plane.errors import Forbidden, NotFound
from control_plane.trust.service import TrustView

__all__ = ["DrainAccepted", "NodeEntry", "NodeList", "NodeModel", "NodesController", "OperatorStats", "Revoked"]


def provide_directory(request: Request) -> NodeDirectory:
    return request.app.state.runtime.directory


class NodesController(Controller):
    path = "/api/v1/nodes"
    tags = ["nodes"]
    dependencies = {"directory": Provide(provide_directory, sync_to_thread=False)}

    @get("/", summary="The nodes of the network: state, models, tokens/sec, slots (paginated)")
    async def list_nodes(
        self, principal: NamedDependency[Principal], directory: NamedDependency[NodeDirectory],
        limit: Annotated[int | None, QueryParameter(ge=1, le=1000, description="1-1000, default 100")] = None,
        cursor: Annotated[str | None, QueryParameter(description="next_cursor of the previous page")] = None,
        model: Annotated[str | None, QueryParameter(description="only nodes serving this model now")] = None,
        node_state: Annotated[StateFilter | None, QueryParameter(
            name="state", description="online, draining, offline or quarantined")] = None,
    ) -> NodeList:
        return await directory.page(account_id=principal.account_id, limit=limit, cursor=cursor or None, model=model,
                                    state=node_state, is_admin=principal.is_admin)

    @post("/{node_id:str}/drain", status_code=202,
          summary="Drain a node (admin, or its operator): no new jobs, in-flight ones finish")
    async def drain(self, node_id: FromPath[str], principal: NamedDependency[Principal],
                    runtime: NamedDependency[Runtime]) -> DrainAccepted:
        await drain_node(runtime.db, runtime.registry, runtime.bus, principal, node_id)
        return DrainAccepted(node_id=node_id, state="draining")

    @get("/{node_id:str}/trust", summary="A node's reputation and the evidence behind it (admins, its operator)")
    async def trust(self, node_id: FromPath[str], principal: NamedDependency[Principal],
                    runtime: NamedDependency[Runtime]) -> TrustView:
        row = await runtime.db.fetchone("node_operator", {"id": node_id})
        if row is None or not (principal.is_admin or row["operator_account_id"] == principal.account_id):
            raise NotFound(f"node {node_id} is not one of your nodes")
        return runtime.trust.view(node_id)

    @post("/{node_id:str}/clear-quarantine", status_code=200,
          summary="Clear a node's trust record (admin): quarantine lifted, evidence forgotten, probation again")
    async def clear_quarantine(self, node_id: FromPath[str], principal: NamedDependency[Principal],
                               runtime: NamedDependency[Runtime]) -> TrustView:
        if not principal.is_admin:
            raise Forbidden("clearing a node's quarantine needs an admin key")
        if not await runtime.db.fetchone("get_node_token_hash", {"id": node_id}):
            raise NotFound(f"node {node_id} is not registered")
        return await runtime.trust.clear(node_id)

    @post("/{node_id:str}/revoke", status_code=200,
          summary="Revoke a node (admin): the bus refuses it from now on and its live connections are closed")
    async def revoke(self, node_id: FromPath[str], principal: NamedDependency[Principal],
                     runtime: NamedDependency[Runtime]) -> Revoked:
        if not principal.is_admin:
            raise Forbidden("revoking a node needs an admin key")
        return await revoke_everywhere(runtime, node_id)

