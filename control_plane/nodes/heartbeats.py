"""Feeds node advertisements into the registry (bounded by the node's registration) and into the nodes table.

The bus proves who sent an advertisement: a node may publish only on its own advertisement subject (its bus
identity's permissions), so the subject's node id must equal the advertisement's, and no token travels.
Per advertisement the work is O(1) on the event loop: a cached registration (nodes not seen yet are looked
up in batches), the registry update, and the change detection of NodeStateWriter."""

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
from control_plane.nodes.persistence import NodeStateWriter
from control_plane.nodes.reports import RunningReports
from control_plane.nodes.service import UNKNOWN, NodeEntry, NodeRegistrations
from control_plane.scheduler.registry import NodeRegistry
from control_plane.store import Database, StoreError
from protocol import subjects

log = structlog.get_logger("control_plane.heartbeats")

#: Advertisements of not-yet-checked nodes held at most while their tokens are looked up.
MAX_UNVERIFIED = 20_000


class HeartbeatHandler:
    """Subscribes to advertisements; one instance per replica."""

    def __init__(self, db: Database, bus: Bus, registry: NodeRegistry, verifier: NodeRegistrations,
                 dispatcher: Dispatcher, sweeper: Sweeper, *, persist_interval_s: float = 1.0,
                 writer: NodeStateWriter | None = None, results_ready=lambda: True) -> None:
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
        self._results_ready = results_ready

    async def start(self) -> None:
        await self._bus.subscribe(subjects.advertisements(), self._on_message)
        await self._bus.subscribe(subjects.all_node_verify(), self._on_verify, queue="control-plane-verify")
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
        """Tell a node how this control plane sees it (infernet-node doctor), with this replica's clock. The
        subject names the asker: a node can only ask about itself."""
        node_id = subjects.node_of(msg.subject)
        if node_id is None or not msg.reply:
            return
        try:
            entry = await self._verifier.lookup(node_id)
        except StoreError as exc:
            accepted, reason, name = False, f"the control plane cannot read its node list right now: {exc}", None
        else:
            accepted = entry is not None and not entry.revoked
            name = entry.name if entry else None
            reason = None if accepted else ("node revoked" if entry else "unknown node")
        reply = protocol.NodeVerifyReply(node_id=node_id, accepted=accepted, reason=reason, name=name,
                                         server_time=time.time(), results_ready=bool(self._results_ready()))
        await msg.respond(protocol.encode(reply))

    async def _on_message(self, msg) -> None:
        try:
            ad = protocol.decode(msg.data, protocol.Advertisement)
        except protocol.DecodeError as exc:
            log.warning("malformed_advertisement", error=str(exc))
            return
        sender = subjects.node_of(msg.subject)
        if sender != ad.node_id:
            self._rejected(sender or "?", f"advertisement for {ad.node_id} published on {msg.subject}")
            return
        entry = self._verifier.cached(ad.node_id)
        if entry is UNKNOWN:  # first advertisement of a node this replica has not looked up: in a batch
            self._queue_unverified(ad)
        else:
            await self._admit(ad, entry)

    async def _admit(self, ad: protocol.Advertisement, entry: NodeEntry | None) -> None:
        if entry is None or entry.revoked:
            self._rejected(ad.node_id, "node revoked" if entry else "unknown node")
            return
        await self.observe(self._bounded(ad, entry))

    def _bounded(self, ad: protocol.Advertisement, entry: NodeEntry) -> protocol.Advertisement:
        """The advertisement as far as the registration allows: slots up to its limit, only the models it names
        (tokens/sec: placement uses the control plane's own measurement, control_plane/trust)."""
        changes: dict = {}
        if ad.slots > entry.max_slots:
            changes["slots"] = entry.max_slots
        models, changed = [], False
        for m in ad.models:
            if not entry.allows(m.name):
                changed = True
                continue
            models.append(m)
        if changed:
            changes["models"] = tuple(models)
        return msgspec.structs.replace(ad, **changes) if changes else ad

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
                entries = await self._verifier.lookup_many([ad.node_id for ad in ads])
            except StoreError as exc:
                log.warning("advertisement_unverified", nodes=len(ads), error=str(exc),
                            detail="dropped; the nodes advertise again in one interval")
                continue
            for i, (ad, entry) in enumerate(zip(ads, entries), 1):
                await self._admit(ad, entry)
                if i % 100 == 0:
                    await asyncio.sleep(0)  # a burst after a start: let requests and other messages in between

    def _rejected(self, node_id: str, detail: str) -> None:
        now = time.monotonic()
        if now - self._rejected_logged.get(node_id, 0.0) > 60:
            if len(self._rejected_logged) >= MAX_UNVERIFIED:
                self._rejected_logged.clear()
            self._rejected_logged[node_id] = now
            log.warning("advertisement_rejected", node_id=node_id, detail=detail)

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
