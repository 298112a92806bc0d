"""Periodic upkeep: lost nodes' jobs, orphaned pending jobs, claim renewal, jobs past their deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog

from control_plane.bus.link import BusLink
from control_plane.jobs.dispatcher import Dispatcher, QueuedJob
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database, StoreError

log = structlog.get_logger("control_plane.sweeper")

#: Seconds past a job's deadline before a processing job with no outcome is failed here.
DEADLINE_GRACE_SECS = 30.0
#: After this replica's NATS connection comes back, how long silent nodes are given to be heard again before
#: they count as lost: a node's own reconnect backoff tops out at about 12 s, and it advertises on reconnecting.
BUS_BACK_QUIET_S = 15.0


class Sweeper:
    """Keeps every job moving when nodes or replicas disappear."""

    def __init__(self, db: Database, registry: NodeRegistry, dispatcher: Dispatcher, settings: Settings,
                 *, clock=time.monotonic, link: BusLink | None = None,
                 outcome_waiting: Callable[[str, str, int, str | None], Awaitable[bool]] | None = None) -> None:
        self._db = db
        #: Whether a node stored an outcome of an attempt that is not recorded yet (Bus.outcome_waiting).
        self._outcome_waiting = outcome_waiting
        #: This replica's NATS connection: while it is down (and shortly after) silent nodes are not lost.
        self._link = link
        self._registry = registry
        self._dispatcher = dispatcher
        self._settings = settings
        self._clock = clock
        self._started = clock()
        self._last_renew = 0.0
        self._last_report_check = 0.0
        #: Set by the runtime: what nodes say they hold (control_plane.nodes.reports.RunningReports).
        self.reports = None

    @property
    def replica_id(self) -> str:
        return self._settings.replica_id

    @property
    def warm(self) -> bool:
        """True once a full offline window has passed since start, so the registry has heard every live node."""
        return self._clock() - self._started >= self._settings.warmup_s

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.warning("sweep_failed", error=str(exc), action="retrying next interval")
            except Exception:
                log.exception("sweep_error")

    def _deaf(self) -> bool:
        """This replica cannot hear nodes now (its bus is down) or only just can again: their silence says
        nothing, so they are not declared lost (their jobs run on and report once NATS is back)."""
        if self._link is None:
            return False
        back = self._link.back_for()
        return not self._link.up or (back is not None and back < BUS_BACK_QUIET_S)

    async def sweep(self) -> None:
        deaf = self._deaf()
        lost = [] if deaf else self._registry.expire()
        if lost:
            log.warning("nodes_offline", node_ids=lost, detail="missed 3 heartbeats; re-placing their jobs")
            if self.reports is not None:
                for node_id in lost:
                    self.reports.forget_node(node_id)
            await self.nodes_lost(lost)
        now = self._clock()
        held = self._dispatcher.held_ids()
        if held and now - self._last_renew > self._settings.claim_secs / 3:
            self._last_renew = now
            await self._db.execute("renew_claims", {"ids": held, "claimed_by": self._settings.replica_id,
                                                    "claim_secs": self._settings.claim_secs})
        if self.warm:
            await self._adopt_orphans()
            if self.reports is not None and not deaf and now - self._last_report_check >= 2.0:
                self._last_report_check = now
                await self._check_reports()
        for row in await self._db.fetchall("stale_processing", {"grace_secs": DEADLINE_GRACE_SECS}):
            if await self._db.execute("expire_processing", {"id": row["id"], "attempt": row["attempt"]}):
                log.warning("job_timed_out", job_id=row["id"], node_id=row["node_id"])
                self._dispatcher.job_ended(row["id"], row["node_id"], row["attempt"])
                if row["node_id"]:  # if the node still runs it, its engine stops now
                    await self._dispatcher.cancel_on_node(row["node_id"], row["id"], row["attempt"], reason="timeout")

    async def _adopt_orphans(self) -> None:
        rows = await self._db.fetchall("claim_orphaned_pending", {
            "claimed_by": self._settings.replica_id, "claim_secs": self._settings.claim_secs, "limit": 200,
        })
        held = set(self._dispatcher.held_ids())
        for row in rows:
            if row["id"] in held:
                continue
            attempt = row["attempt"] if row["attempt"] > 0 else 1
            self._dispatcher.enqueue(QueuedJob.from_row(row, attempt=attempt))
            log.info("job_adopted", job_id=row["id"], detail="pending job had no live replica holding it")

    async def _check_reports(self) -> None:
        """Attempts that a live node's last two reports do not list (e.g. the replica that offered them died
        before the offer went out) are re-placed or failed like those of a lost node. So are attempts recorded on
        a node that is offline or unknown here: a replica that dies while handing a job to a node that dies at
        the same moment can commit the attempt after the node's loss was handled, and no later loss covers it."""
        latest = self.reports.latest
        processing = await self._db.fetchall("unconfirmed_processing", {"min_age": 2.0})
        for row in processing:
            if row["node_id"] not in latest and self._offline(row["node_id"]):
                if self._outcome_waiting is not None and await self._outcome_waiting(
                        row["node_id"], row["id"], row["attempt"], row.get("lease")):
                    continue  # its outcome is stored and waits to be recorded
                await self.lose_attempt(row, "offline")
        rows = [r for r in processing if r["node_id"] in latest]
        current = {(r["id"], r["attempt"]) for r in rows}
        for key in [k for k in self.reports.missing_since if k not in current]:
            del self.reports.missing_since[key]  # ended normally after one missing report
        for row in rows:
            if self.reports.vanished(row["id"], row["attempt"], row["node_id"], row["assigned_at"]):
                if self._outcome_waiting is not None and await self._outcome_waiting(
                        row["node_id"], row["id"], row["attempt"], row.get("lease")):
                    continue  # it ended: its outcome is stored and waits to be recorded (e.g. JetStream re-elected)
                await self.lose_attempt(row, "not holding the job")

    def _offline(self, node_id: str) -> bool:
        """The registry has the node offline, or does not know it (never seen since start-up, or forgotten)."""
        brief = self._registry.brief(node_id)
        return brief is None or brief.state == "offline"

    async def nodes_lost(self, node_ids: Iterable[str], *, started_before=None) -> None:
        """Re-place (or fail) the processing jobs of nodes that died or restarted."""
        node_ids = list(node_ids)
        rows = await self._db.fetchall("processing_on_nodes", {"node_ids": node_ids})
        for row in rows:
            if started_before is not None and row.get("started_at") and row["started_at"] >= started_before:
                continue
            if self._dispatcher.offering(row["id"]):
                continue  # its offer is still in flight here: the reply or its timeout decides (never both)
            await self.lose_attempt(row, "lost")

    async def lose_attempt(self, row: dict, how: str) -> None:
        """The node running this attempt is gone or no longer has it: re-place the job, or fail it (node_lost)."""
        bound = log.bind(job_id=row["id"], node_id=row["node_id"], attempt=row["attempt"])
        self._dispatcher.job_ended(row["id"], row["node_id"], row["attempt"])
        self._registry.record_outcome(row["node_id"], False)
        tokens_sent = row["first_token_at"] is not None
        if not tokens_sent and row["attempt"] < self._settings.max_attempts:
            requeued = await self._db.fetchone("requeue_attempt", {
                "id": row["id"], "attempt": row["attempt"], "lease": None,
                "claimed_by": self._settings.replica_id, "claim_secs": self._settings.claim_secs,
            })
            if requeued is not None:
                job = QueuedJob.from_row(requeued, attempt=row["attempt"] + 1)
                job.tried.add(row["node_id"])
                self._dispatcher.enqueue(job)
                bound.warning("job_requeued_node_lost", how=how)
                self._dispatcher.metrics.requeued.inc()
                return
            # Not re-placed: its first token reached a client meanwhile, or the row moved on (another replica
            # re-placed it, it ended): fail it only in the first case, checked in the same statement.
            message = f"node {row['node_id']} was {how} after tokens reached the client"
            if await self._db.execute("fail_processing_streamed", {"id": row["id"], "attempt": row["attempt"],
                                                                   "error": "node_lost", "error_message": message}):
                bound.warning("job_failed_node_lost", how=how)
            return
        message = (f"node {row['node_id']} was {how} after tokens reached the client"
                   if tokens_sent
                   else f"node {row['node_id']} was {how} on the last allowed attempt ({row['attempt']})")
        if await self._db.execute("fail_processing", {"id": row["id"], "attempt": row["attempt"],
                                                      "error": "node_lost", "error_message": message}):
            bound.warning("job_failed_node_lost", how=how)
