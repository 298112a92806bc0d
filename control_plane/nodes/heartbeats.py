"""Feeds node advertisements into the registry (bounded by the node's registration and by the model claims the
control plane verified, control_plane/trust/claims.py) and into the nodes table.

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
from control_plane.scheduler.registry import NodeRegistry, repeats
from control_plane.store import Database, StoreError
from control_plane.trust.claims import ModelClaims
from protocol import subjects

#: Advertisements handled between two returns to the event loop (about 0.1 ms of work).
YIELD_EVERY = 4

log = structlog.get_logger("control_plane.heartbeats")

#: Advertisements of not-yet-checked nodes held at most while their tokens are looked up.
MAX_UNVERIFIED = 20_000


class HeartbeatHandler:
    """Subscribes to advertisements; one instance per replica."""

    def __init__(self, db: Database, bus: Bus, registry: NodeRegistry, verifier: NodeRegistrations,
                 dispatcher: Dispatcher, sweeper: Sweeper, *, persist_interval_s: float = 1.0,
                 writer: NodeStateWriter | None = None, results_ready=lambda: True,
                 claims: ModelClaims | None = None) -> None:
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
        #: node id -> (its last advertisement, the registration it was checked against), kept only when that
        #: registration alone accepted it unchanged (no claim to measure, no slot cap): the same advertisement
        #: again under the same registration is accepted without checking it model by model.
        self._plain: dict[str, tuple[protocol.Advertisement, NodeEntry]] = {}
        self.repeats = 0  # advertisements accepted that way
        self._handled = 0
        self._rejected_logged: dict[str, float] = {}
        self._results_ready = results_ready
        #: Models nodes claim outside their registration, verified by measurement (None: none is ever verified).
        self._claims = claims
        #: The newest advertisement of each node that claims models not verified yet (admitted again once one
        #: is), and the claims waiting for a measurement to start.
        self._withheld: dict[str, protocol.Advertisement] = {}
        self._to_measure: dict[str, list[str]] = {}
        self._measuring: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        if claims is not None:
            claims.on_verified(self._claim_verified)

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
        self._handled += 1
        if self._handled % YIELD_EVERY == 0:
            # The bus hands a subscription's queued messages over without returning to the event loop, so a
            # burst of advertisements (10,000 nodes: 2,000 a second) would hold every request behind it.
            await asyncio.sleep(0)

    async def _admit(self, ad: protocol.Advertisement, entry: NodeEntry | None) -> None:
        if entry is None or entry.revoked:
            self._rejected(ad.node_id, "node revoked" if entry else "unknown node")
            return
        plain = self._plain.get(ad.node_id)
        if (plain is not None and plain[1] is entry
                and repeats(ad, plain[0])):
            # The first of the run stays the reference. Nothing of a repeat is kept (the registry, the running
            # report and the state writer keep what they hold too): it is freed once handled, so the young
            # generation does not fill with 10,000 nodes' heartbeats between collections, which would make
            # each collection a stall of tens of milliseconds for every request.
            self.repeats += 1
            self._repeated(ad)
            return
        bounded, withheld = self._bounded(ad, entry)
        if bounded is ad and not withheld and all(entry.trusts(m.name) for m in ad.models):
            self._plain[ad.node_id] = (ad, entry)
        else:
            self._plain.pop(ad.node_id, None)
        await self.observe(bounded)
        self._registry.set_claims(ad.node_id, withheld)
        if not withheld:
            self._withheld.pop(ad.node_id, None)
            return
        if ad.node_id in self._withheld or len(self._withheld) < MAX_UNVERIFIED:
            self._withheld[ad.node_id] = ad
        if self._claims is not None and (due := self._claims.due(ad.node_id, withheld)):
            self._queue_measurement(ad.node_id, due)

    def _bounded(self, ad: protocol.Advertisement,
                 entry: NodeEntry) -> tuple[protocol.Advertisement, dict[str, protocol.ModelInfo]]:
        """The advertisement as far as the control plane accepts it: slots up to the registration's limit, and
        only the models the registration trusts or a measurement verified (tokens/sec: placement uses the
        control plane's own measurement, control_plane/trust); plus the claims held back for measuring."""
        changes: dict = {}
        if ad.slots > entry.max_slots:
            changes["slots"] = entry.max_slots
        models, withheld = [], {}
        claims = self._claims
        for m in ad.models:
            if entry.trusts(m.name) or (claims is not None and claims.verified(ad.node_id, m.name)):
                models.append(m)
            else:
                withheld[m.name] = m
        if withheld:
            changes["models"] = tuple(models)
        return (msgspec.structs.replace(ad, **changes) if changes else ad), withheld

    def _queue_measurement(self, node_id: str, models: list[str]) -> None:
        if node_id not in self._to_measure and len(self._to_measure) >= MAX_UNVERIFIED:
            return  # the node advertises again in one interval
        self._to_measure[node_id] = models
        if self._measuring is None or self._measuring.done():
            self._measuring = asyncio.create_task(self._measure_queued(), name="measure-model-claims")

    async def _measure_queued(self) -> None:
        while self._to_measure:
            node_id = next(iter(self._to_measure))
            models = self._to_measure.pop(node_id)
            try:
                await self._claims.measure(node_id, models)
            except StoreError as exc:
                log.warning("model_claim_measure_failed", node_id=node_id, models=models, error=str(exc),
                            detail="tried again on a later advertisement")

    def _claim_verified(self, node_id: str, model: str) -> None:
        """A claim of the node was verified: admit its newest advertisement again so the model is served now,
        not one advertisement interval later."""
        ad = self._withheld.get(node_id)
        if ad is None or not any(m.name == model for m in ad.models):
            return
        task = asyncio.create_task(self._readmit(ad), name="readmit-advertisement")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _readmit(self, ad: protocol.Advertisement) -> None:
        if self._withheld.get(ad.node_id) is not ad:
            return  # a newer advertisement was admitted meanwhile, with the verified claim in it
        entry = self._verifier.cached(ad.node_id)
        if entry is UNKNOWN:
            self._queue_unverified(ad)
        else:
            await self._admit(ad, entry)

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

    def _repeated(self, ad: protocol.Advertisement) -> None:
        """The node's previous advertisement again (only `sent_at` differs), already accepted as it is: the same
        boot, nothing withheld. Liveness, the running-jobs report and last_seen_at move; the registry sees it
        (and takes its own short path when nothing of its state depends on it)."""
        if self._registry.observe(ad):
            self._dispatcher.wake()
        self.reports.record(ad.node_id, datetime.now(timezone.utc), ad.running, ad.interval_s)
        self.writer.seen(ad)

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
