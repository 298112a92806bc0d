"""Node presence from the NATS server itself: a node whose last connection drops is lost at once.

The server publishes a connect/disconnect event for every client of the application account (the replica's
system-account connection hears them); a node id is the user name the auth callout gave the connection.
Heartbeats stay the backstop for a node that is connected but hung.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import structlog

from control_plane.bus.system import ClientEvent
from control_plane.jobs.sweeper import Sweeper
from control_plane.nodes.reports import RunningReports
from control_plane.scheduler.registry import NodeRegistry

log = structlog.get_logger("control_plane.presence")


class NodePresence:
    """Live bus connections per node; when the last one closes (and stays closed for `grace_s`), the node is
    offline and its processing jobs are re-placed."""

    def __init__(self, registry: NodeRegistry, sweeper: Sweeper, reports: RunningReports, *,
                 grace_s: float = 0.5) -> None:
        self._registry = registry
        self._sweeper = sweeper
        self._reports = reports
        self._grace_s = grace_s
        self._live: dict[str, set[tuple[str, int]]] = {}
        self._pending: dict[str, asyncio.Task] = {}

    async def on_event(self, ev: ClientEvent) -> None:
        node_id = ev.user
        if not node_id.startswith("node_"):
            return  # a control-plane replica or a system user
        key = (ev.server_id, ev.cid)
        if ev.connected:
            self._live.setdefault(node_id, set()).add(key)
            task = self._pending.pop(node_id, None)
            if task is not None:
                task.cancel()
            return
        live = self._live.get(node_id)
        if live is not None:
            live.discard(key)
            if live:
                return  # another connection of the same node is still up
            del self._live[node_id]
        if node_id not in self._pending:
            since = datetime.now(timezone.utc)
            task = asyncio.create_task(self._lost(node_id, since, ev.reason), name=f"node-lost {node_id}")
            self._pending[node_id] = task

    async def _lost(self, node_id: str, since: datetime, reason: str) -> None:
        try:
            await asyncio.sleep(self._grace_s)
        except asyncio.CancelledError:
            return  # it reconnected
        self._pending.pop(node_id, None)
        if self._live.get(node_id):
            return
        self._registry.mark_offline(node_id)
        self._reports.forget_node(node_id)
        log.warning("node_disconnected", node_id=node_id, reason=reason, detail="re-placing its jobs")
        try:
            await self._sweeper.nodes_lost([node_id], started_before=since)
        except Exception as exc:  # the sweeper's heartbeat path re-places them later
            log.warning("node_lost_replace_failed", node_id=node_id, error=str(exc) or type(exc).__name__)

    async def stop(self) -> None:
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
