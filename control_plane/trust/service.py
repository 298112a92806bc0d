"""Each node's standing: evidence from outcomes, checks and probes folded into a persisted reputation that
steers placement (tier, quarantine) and measured tokens/sec that replaces the advertised figure.

Evidence is applied in memory at once (a quarantine takes effect on this replica immediately) and written to
PostgreSQL in batches every `trust_sync_s` under row locks, so replicas add up their evidence; each replica
reads back what the others wrote on the same tick.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
import structlog

import protocol
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database, StoreError
from control_plane.store.database import jsonb
from control_plane.trust import reputation as rep
from control_plane.trust.claims import ModelClaims
from control_plane.trust.reputation import Evidence, Standing
from control_plane.trust.verify import Verifier

log = structlog.get_logger("control_plane.trust")

#: Failure codes that say something about the node (not the request, the client, or a drain).
NODE_FAULTS = frozenset({"engine_error", "engine_unavailable", "timeout", "internal_error"})
#: Counter column per kind of evidence.
COUNTERS = {
    Evidence.CHECK_PASSED: "checks_passed", Evidence.CHECK_FAILED: "checks_failed",
    Evidence.PROBE_PASSED: "probes_passed", Evidence.PROBE_FAILED: "probes_failed",
    Evidence.USAGE_CAPPED: "usage_capped", Evidence.ERROR: "errors", Evidence.UNANSWERED: "unanswered",
    Evidence.SERVED: "served",
}
#: Placement tiers by reputation: each tier down costs a node TIER_BANDS speed bands (x1.1 each: about 2.1x).
TIER_FLOORS = (0.7, 0.5)
#: Weight of the newest measurement in a node's measured tokens/sec (per model).
TPS_ALPHA = 0.3
#: Measurements need at least this many completion tokens and this much time to mean anything.
MIN_TOKENS, MIN_SECONDS = 2, 0.001
#: Standings written by other replicas are read back with this much overlap (commit order vs now()).
SYNC_OVERLAP = timedelta(seconds=5)


def tier(score: float) -> int:
    """0 for a normal node (a new one included), 1 and 2 for nodes placement should use only when others can't."""
    return sum(1 for floor in TIER_FLOORS if score < floor)


class TrustView(msgspec.Struct, kw_only=True):
    """A node's standing as admins and its operator see it."""

    reputation: float
    quarantined: bool
    probation: bool
    checks_passed: int = 0
    checks_failed: int = 0
    probes_passed: int = 0
    probes_failed: int = 0
    usage_capped: int = 0
    errors: int = 0
    unanswered: int = 0
    served: int = 0


@dataclass(slots=True)
class _Node:
    standing: Standing
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS.values(), 0))
    tps: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Pending:
    events: list[Evidence] = field(default_factory=list)
    tps: dict[str, float] = field(default_factory=dict)


class TrustService:
    """Holds every node's standing on this replica and keeps it in step with PostgreSQL and the registry."""

    def __init__(self, db: Database, registry: NodeRegistry, settings: Settings | None = None, *,
                 clock=time.time) -> None:
        settings = settings or Settings()
        self._db = db
        self._registry = registry
        self._sync_s = settings.trust_sync_s
        self._holdback_s = settings.payout_holdback_s
        self.policy = settings.trust_policy()
        self._clock = clock
        self.verifier = Verifier(db, registry, settings, self.add, standing=self.view,
                                 claim_settled=self._claim_settled)
        #: Models nodes claim outside their registration, verified by known-answer probes.
        self.claims = ModelClaims(db, registry, settings, probe=self.verifier.probe_claim)
        self._nodes: dict[str, _Node] = {}
        self._pending: dict[str, _Pending] = defaultdict(_Pending)
        self._since: datetime | None = None
        self._flushed = asyncio.Event()

    # -- evidence (cheap, synchronous: called from the recorder and dispatcher) ------------------------
    def completed(self, outcome: protocol.JobResult, row: dict[str, Any]) -> None:
        """A job completed on the node: usage the control plane had to cap, the speed it measured, served."""
        node_id = outcome.node_id
        capped = (int(row.get("completion_tokens") or 0) < outcome.usage.completion_tokens
                  or int(row.get("prompt_tokens") or 0) < outcome.usage.prompt_tokens)
        if capped:
            log.warning("usage_capped", node_id=node_id, job_id=outcome.job_id,
                        claimed=[outcome.usage.prompt_tokens, outcome.usage.completion_tokens],
                        charged=[row.get("prompt_tokens"), row.get("completion_tokens")],
                        detail="the node claimed more tokens than its text can hold; charged the bound")
        self.add(node_id, Evidence.USAGE_CAPPED if capped else Evidence.SERVED)
        tps = measured_tps(row)
        if tps is not None and outcome.embeddings is None:
            self.measure(node_id, row["model"], tps)
        self.verifier.completed(row)

    def failed(self, node_id: str, error: str) -> None:
        if error in NODE_FAULTS:
            self.add(node_id, Evidence.ERROR)

    def unanswered(self, node_id: str) -> None:
        self.add(node_id, Evidence.UNANSWERED)

    def add(self, node_id: str, event: Evidence) -> None:
        """Fold one piece of evidence in now (memory, registry) and queue it for the database."""
        self._pending[node_id].events.append(event)
        node = self._node(node_id)
        good, bad = rep.weigh((event,))
        before = node.standing.quarantined
        node.standing = rep.add(node.standing, good, bad, self._clock(), self.policy)
        node.counters[COUNTERS[event]] += 1
        self._publish(node_id, node, was_quarantined=before)

    def measure(self, node_id: str, model: str, tps: float) -> None:
        """One measured tokens/sec of the node on a model: the first replaces the advertised figure."""
        node = self._node(node_id)
        old = node.tps.get(model)
        new = tps if old is None else old + TPS_ALPHA * (tps - old)
        node.tps[model] = new
        self._pending[node_id].tps[model] = new
        self._registry.set_measured_tps(node_id, model, new)

    # -- reads ---------------------------------------------------------------------------------
    def view(self, node_id: str) -> TrustView:
        node = self._nodes.get(node_id)
        standing = node.standing if node is not None else Standing(at=self._clock())
        counters = node.counters if node is not None else {}
        return TrustView(reputation=round(rep.score(standing, self.policy), 4), quarantined=standing.quarantined,
                         probation=rep.on_probation(standing, self.policy), **counters)

    def quarantined(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and node.standing.quarantined

    # -- admin ---------------------------------------------------------------------------------
    async def clear(self, node_id: str) -> TrustView:
        """Forget the node's evidence and lift its quarantine (it starts on probation again)."""
        await self.flush()  # evidence queued here must not land after the clear
        row = await self._db.fetchone("trust_clear", {"node_id": node_id, "now": self._clock()})
        if row is not None:
            self._load_row(row)
        else:
            node = self._node(node_id)
            node.standing = rep.cleared(self._clock())
            self._publish(node_id, node, was_quarantined=True)
        log.info("node_trust_cleared", node_id=node_id)
        return self.view(node_id)

    # -- persistence ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every standing and give placement the tiers, quarantines and measured speeds."""
        await self.verifier.start()
        await self._db.execute("set_payout_holdback", {"secs": self._holdback_s})
        self._since = (await self._db.fetchone("trust_now"))["now"]
        for row in await self._db.fetchall("trust_changed_since", {"since": None}):
            self._load_row(row)
        await self.claims.start()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._sync_s)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.warning("trust_sync_failed", error=str(exc), action="evidence kept in memory; retrying")
            except Exception:
                log.exception("trust_sync_error")

    async def sync(self) -> None:
        """Write queued evidence, then read what other replicas (or an admin) wrote; release ended holdbacks."""
        await self.flush()
        if self._holdback_s > 0:
            released = await self._db.fetchall("release_payouts", {"secs": self._holdback_s, "limit": 1000})
            if released:
                log.info("payouts_released", entries=len(released))
        now = (await self._db.fetchone("trust_now"))["now"]
        since = None if self._since is None else self._since - SYNC_OVERLAP
        mine = set(self._pending)
        for row in await self._db.fetchall("trust_changed_since", {"since": since}):
            if row["node_id"] not in mine:  # evidence queued meanwhile is already in memory
                self._load_row(row)
        self._since = now
        await self.claims.sync()

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, defaultdict(_Pending)
        ids = sorted(batch)
        now = self._clock()
        try:
            async with self._db.transaction() as tx:
                await tx.execute("trust_ensure", {"ids": ids, "now": now})
                locked = {r["node_id"]: r for r in await tx.fetchall("trust_lock", {"ids": ids})}
                cols: dict[str, list] = defaultdict(list)
                for node_id in ids:
                    pending, row = batch[node_id], locked[node_id]
                    good, bad = rep.weigh(pending.events)
                    standing = rep.add(_standing(row), good, bad, now, self.policy)
                    cols["ids"].append(node_id)
                    cols["good"].append(standing.good)
                    cols["bad"].append(standing.bad)
                    cols["decayed_at"].append(standing.at)
                    cols["quarantined"].append(standing.quarantined)
                    counts = dict.fromkeys(COUNTERS.values(), 0)
                    for event in pending.events:
                        counts[COUNTERS[event]] += 1
                    for name, value in counts.items():
                        cols[name].append(value)
                    cols["measured_tps"].append(jsonb(pending.tps))
                written = await tx.fetchall("trust_write", dict(cols))
        except BaseException:
            for node_id, pending in batch.items():  # keep it for the next try (in front of newer evidence)
                newer = self._pending[node_id]
                newer.events[:0] = pending.events
                newer.tps = {**pending.tps, **newer.tps}
            raise
        for row in written:
            if row["node_id"] not in self._pending:
                self._load_row(row)

    async def _claim_settled(self, node_id: str, model: str, passed: bool) -> None:
        await self.claims.settled(node_id, model, passed)

    # -- internals -----------------------------------------------------------------------------
    def _node(self, node_id: str) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node(Standing(at=self._clock()))
        return node

    def _load_row(self, row: dict[str, Any]) -> None:
        node_id = row["node_id"]
        node = self._node(node_id)
        before = node.standing.quarantined
        node.standing = _standing(row)
        node.counters = {name: int(row[name]) for name in COUNTERS.values()}
        for model, tps in (row.get("measured_tps") or {}).items():
            if isinstance(tps, (int, float)) and math.isfinite(tps) and tps > 0 and node.tps.get(model) != tps:
                node.tps[model] = float(tps)
                self._registry.set_measured_tps(node_id, model, float(tps))
        self._publish(node_id, node, was_quarantined=before)

    def _publish(self, node_id: str, node: _Node, *, was_quarantined: bool) -> None:
        score = rep.score(node.standing, self.policy)
        quarantined = node.standing.quarantined
        self._registry.set_trust(node_id, tier(score), quarantined)
        if quarantined != was_quarantined:
            if quarantined:
                log.warning("node_quarantined", node_id=node_id, reputation=round(score, 3),
                            detail="no user jobs until it recovers or an admin clears it "
                                   "(infernet-control-plane nodes clear-quarantine)")
            else:
                log.info("node_released", node_id=node_id, reputation=round(score, 3))


def _standing(row: dict[str, Any]) -> Standing:
    return Standing(float(row["good"]), float(row["bad"]), bool(row["quarantined"]), float(row["decayed_at"]))


def measured_tps(row: dict[str, Any]) -> float | None:
    """Tokens/sec from the control plane's own clock: completion tokens (already capped) over the time from the
    attempt's first token reaching a client (or its assignment) to the result being recorded."""
    tokens = int(row.get("completion_tokens") or 0)
    end = row.get("completed_at")
    start = row.get("first_token_at") or row.get("assigned_at")
    if tokens < MIN_TOKENS or not isinstance(end, datetime) or not isinstance(start, datetime):
        return None
    seconds = (end - start).total_seconds()
    if seconds < MIN_SECONDS:
        return None
    return tokens / seconds


__all__ = ["NODE_FAULTS", "TrustService", "TrustView", "measured_tps", "tier"]
