"""Feeds node advertisements into the registry (after checking the node's token) and into the nodes table."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import msgspec
import structlog

import protocol
from control_plane.bus import Bus
from control_plane.jobs.dispatcher import Dispatcher
from control_plane.jobs.sweeper import Sweeper
from control_plane.nodes.reports import RunningReports
from control_plane.nodes.service import NodeTokenVerifier
from control_plane.scheduler.registry import NodeRegistry
from control_plane.store import Database, StoreError
from control_plane.store.database import jsonb
from protocol import subjects

log = structlog.get_logger("control_plane.heartbeats")


class HeartbeatHandler:
    """Subscribes to advertisements; one instance per replica."""

    def __init__(self, db: Database, bus: Bus, registry: NodeRegistry, verifier: NodeTokenVerifier,
                 dispatcher: Dispatcher, sweeper: Sweeper, *, persist_interval_s: float = 10.0) -> None:
        self._db = db
        self._bus = bus
        self._registry = registry
        self._verifier = verifier
        self._dispatcher = dispatcher
        self._sweeper = sweeper
        self._persist_interval_s = persist_interval_s
        self._pending: dict[str, tuple[datetime, dict]] = {}
        self.reports = RunningReports()
        self._boots: dict[str, str] = {}
        self._rejected_logged: dict[str, float] = {}

    async def start(self) -> None:
        await self._bus.subscribe(subjects.advertisements(), self._on_message)
        await self._bus.subscribe(subjects.node_verify(), self._on_verify, queue="control-plane-verify")

    async def _on_verify(self, msg) -> None:
        """Answer a node's "is my token accepted?" (infernet-node doctor), with this replica's clock."""
        try:
            req = protocol.decode(msg.data, protocol.NodeVerify)
        except protocol.DecodeError as exc:
            log.warning("malformed_node_verify", error=str(exc))
            return
        try:
            ok = await self._verifier.verify(req.node_id, req.token)
        except StoreError as exc:
            ok, reason = False, f"the control plane cannot check tokens right now: {exc}"
        else:
            reason = None if ok else ("unknown node or wrong token: register the node with "
                                      "'infernet-control-plane nodes register NAME' and use the printed token")
        reply = protocol.NodeVerifyReply(node_id=req.node_id, accepted=ok, reason=reason,
                                         name=self._verifier.name_of(req.node_id) if ok else None,
                                         server_time=time.time())
        await msg.respond(protocol.encode(reply))

    async def _on_message(self, msg) -> None:
        try:
            ad = protocol.decode(msg.data, protocol.Advertisement)
        except protocol.DecodeError as exc:
            log.warning("malformed_advertisement", error=str(exc))
            return
        try:
            ok = await self._verifier.verify(ad.node_id, ad.token)
        except StoreError as exc:
            log.warning("advertisement_unverified", node_id=ad.node_id, error=str(exc))
            return
        if not ok:
            now = time.monotonic()
            if now - self._rejected_logged.get(ad.node_id, 0.0) > 60:
                self._rejected_logged[ad.node_id] = now
                log.warning("advertisement_rejected", node_id=ad.node_id,
                            detail="unknown node or wrong token; register it with "
                                   "'infernet-control-plane nodes register NAME' and use the printed token")
            return
        await self.observe(ad)

    async def observe(self, ad: protocol.Advertisement) -> None:
        previous_boot = self._boots.get(ad.node_id)
        self._boots[ad.node_id] = ad.boot_id
        self._registry.observe(ad)
        self._dispatcher.wake()
        if previous_boot is not None and previous_boot != ad.boot_id:
            log.warning("node_restarted", node_id=ad.node_id, detail="jobs it was running are re-placed")
            await self._sweeper.nodes_lost([ad.node_id], started_before=datetime.now(timezone.utc))
        self.reports.record(ad.node_id, datetime.now(timezone.utc), ad.running, ad.interval_s)
        record = msgspec.to_builtins(ad)
        record.pop("token", None)
        self._pending[ad.node_id] = (datetime.now(timezone.utc), record)

    async def persist_loop(self) -> None:
        """Write first/last seen and the last advertisement of every node heard, in one statement per interval."""
        while True:
            await asyncio.sleep(self._persist_interval_s)
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        ids = list(batch)
        try:
            await self._db.execute("touch_nodes", {
                "ids": ids, "seen_at": [batch[i][0] for i in ids],
                "advertisements": [jsonb(batch[i][1]) for i in ids],
            })
        except StoreError as exc:
            log.warning("node_persist_failed", error=str(exc), nodes=len(ids))
