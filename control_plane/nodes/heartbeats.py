"""Feeds node advertisements into the registry (after checking the node's token) and into the nodes table.

Per advertisement the work is O(1) on the event loop: a cached token check (unchecked nodes are looked
up in batches), the registry update, and the change detection of NodeStateWriter."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import structlog

import protocol
from control_plane.bus import Bus
from control_plane.jobs.dispatcher import Dispatcher
from control_plane.jobs.sweeper import Sweeper
from control_plane.nodes.persistence import NodeStateWriter
from control_plane.nodes.reports import RunningReports
from control_plane.nodes.service import NodeTokenVerifier
from control_plane.scheduler.registry import NodeRegistry
from control_plane.store import Database, StoreError
from protocol import subjects

log = structlog.get_logger("control_plane.heartbeats")

#: Advertisements of not-yet-checked nodes held at most while their tokens are looked up.
MAX_UNVERIFIED = 20_000


class HeartbeatHandler:
    """Subscribes to advertisements; one instance per replica."""

    def __init__(self, db: Database, bus: Bus, registry: NodeRegistry, verifier: NodeTokenVerifier,
                 dispatcher: Dispatcher, sweeper: Sweeper, *, persist_interval_s: float = 1.0,
                 writer: NodeStateWriter | None = None) -> None:
        self._db = db
        self._bus = bus
        self._registry = registry
        self._verifier = verifier
        self._dispatcher = dispatcher
        self._sweeper = sweeper
        #: The nodes table, written incrementally (only what changed) off the advertisement path.
        self.writer = writer or NodeStateWriter(db, interval_s=persist_interval_s)
        self._unverified: dict[str, protocol.Advertisement] = {}
        self._verifying: asyncio.Task | None = None
        self.reports = RunningReports()
        self._boots: dict[str, str] = {}
        self._rejected_logged: dict[str, float] = {}

    async def start(self) -> None:
        await self._bus.subscribe(subjects.advertisements(), self._on_message)
        await self._bus.subscribe(subjects.node_verify(), self._on_verify, queue="control-plane-verify")
        await self.solicit()

    async def solicit(self) -> None:
        """Ask every node to advertise now, so a fresh registry fills in one round trip, not one interval."""
        try:
            await self._bus.publish(subjects.advertisement_requests(),
                                    protocol.AdvertisementRequest(replica_id=self._sweeper.replica_id,
                                                                  sent_at=time.time()))
        except Exception as exc:  # NATS down right now: advertisements arrive on their interval anyway
            log.warning("advertisement_request_failed", error=str(exc) or type(exc).__name__,
                        detail="the registry fills as nodes advertise on their interval")

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
        ok = self._verifier.cached(ad.node_id, ad.token)
        if ok is None:  # first advertisement of a node this replica has not checked: verified in a batch
            self._queue_unverified(ad)
        elif ok:
            await self.observe(ad)
        else:
            self._rejected(ad.node_id)

    def _queue_unverified(self, ad: protocol.Advertisement) -> None:
        """Hold the newest advertisement of each unchecked node until the next batched token lookup."""
        if ad.node_id not in self._unverified and len(self._unverified) >= MAX_UNVERIFIED:
            return  # a flood of made-up node ids: the real ones advertise again in one interval
        self._unverified[ad.node_id] = ad
        if self._verifying is None or self._verifying.done():
            self._verifying = asyncio.create_task(self._verify_queued(), name="verify-advertisements")

    async def _verify_queued(self) -> None:
        while self._unverified:
            ads, self._unverified = list(self._unverified.values()), {}
            try:
                answers = await self._verifier.verify_many([(ad.node_id, ad.token) for ad in ads])
            except StoreError as exc:
                log.warning("advertisement_unverified", nodes=len(ads), error=str(exc),
                            detail="dropped; the nodes advertise again in one interval")
                continue
            for i, (ad, ok) in enumerate(zip(ads, answers), 1):
                if ok:
                    await self.observe(ad)
                else:
                    self._rejected(ad.node_id)
                if i % 100 == 0:
                    await asyncio.sleep(0)  # a burst after a start: let requests and other messages in between

    def _rejected(self, node_id: str) -> None:
        now = time.monotonic()
        if now - self._rejected_logged.get(node_id, 0.0) > 60:
            if len(self._rejected_logged) >= MAX_UNVERIFIED:
                self._rejected_logged.clear()
            self._rejected_logged[node_id] = now
            log.warning("advertisement_rejected", node_id=node_id,
                        detail="unknown node or wrong token; register it with "
                               "'infernet-control-plane nodes register NAME' and use the printed token")

    async def observe(self, ad: protocol.Advertisement) -> None:
        previous_boot = self._boots.get(ad.node_id)
        self._boots[ad.node_id] = ad.boot_id
        if self._registry.observe(ad):
            self._dispatcher.wake()
        if previous_boot is not None and previous_boot != ad.boot_id:
            log.warning("node_restarted", node_id=ad.node_id, detail="jobs it was running are re-placed")
            await self._sweeper.nodes_lost([ad.node_id], started_before=datetime.now(timezone.utc))
        self.reports.record(ad.node_id, datetime.now(timezone.utc), ad.running, ad.interval_s)
        self.writer.note(ad)

    async def persist_loop(self) -> None:
        """Write what changed in the nodes table, a small batch per statement (see NodeStateWriter)."""
        await self.writer.run()

    async def flush(self) -> None:
        await self.writer.write_pending()
