"""Revokes a node everywhere at once: its registration, this replica's caches, its live bus connections, its jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from control_plane.errors import NotFound
from control_plane.nodes.schemas import Revoked
from control_plane.nodes.service import revoke_node

if TYPE_CHECKING:
    from control_plane.runtime import Runtime


async def revoke_everywhere(runtime: Runtime, node_id: str) -> Revoked:
    """The API's and the console's revoke: the bus refuses the node from now on, its open connections are
    closed, and the jobs it held are placed again."""
    row = await revoke_node(runtime.db, node_id, by_name=False)
    if row is None:
        raise NotFound(f"no node {node_id} is registered")
    if runtime.registrations is not None:
        runtime.registrations.forget(node_id)
    disconnected = await runtime.system.kick_user(node_id) if runtime.system is not None else 0
    runtime.registry.mark_offline(node_id)
    await runtime.sweeper.nodes_lost([node_id])
    return Revoked(node_id=node_id, name=row["name"], revoked=True, disconnected=disconnected)
