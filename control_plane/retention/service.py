"""Keeps storage bounded: prunes job content past the retention, folds old ledger entries, drops old deliveries.

Everything runs in small batches (one short statement each, `batch` rows at most) with a pause between
them, so pruning never holds long locks nor competes with the hot path; a backlog (e.g. the first run on an
old database) drains over several ticks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from control_plane.settings import Settings
from control_plane.store import Database, StoreError

log = structlog.get_logger("control_plane.retention")

#: What a job's request holds of its content (prompts, inputs, tools' text, webhook target); the rest stays.
REQUEST_CONTENT = ("messages", "inputs", "input", "prompt", "instructions", "tools", "response", "webhook_url",
                   "images", "suffix")
#: What a job's result holds of its content; usage, finish reason, timings and chunk count stay.
RESULT_CONTENT = ("content", "tool_calls", "embeddings", "logprobs", "typed", "partial_content")


@dataclass
class RetentionReport:
    jobs_pruned: int = 0
    ledger_folded: int = 0
    deliveries_dropped: int = 0


class Retention:
    """One replica's pruning task (several replicas may run it: batches skip rows another one holds)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._days = settings.job_content_retention_days
        self._batch = max(settings.retention_batch, 1)
        self._interval = settings.retention_interval_s
        self._max_batches = max(settings.retention_max_batches, 1)

    @property
    def enabled(self) -> bool:
        return self._days > 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if not self.enabled:
                continue
            try:
                report = await self.tick()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.warning("retention_failed", error=str(exc), action="retrying next interval")
                continue
            except Exception:
                log.exception("retention_error")
                continue
            if report.jobs_pruned or report.ledger_folded or report.deliveries_dropped:
                log.info("retention_pruned", jobs=report.jobs_pruned, ledger_entries=report.ledger_folded,
                         webhook_deliveries=report.deliveries_dropped, retention_days=self._days)

    async def tick(self, *, pause_s: float = 0.05) -> RetentionReport:
        """Up to `retention_max_batches` batches of each kind; stops a kind early when it has nothing left."""
        report = RetentionReport()
        secs = self._days * 86_400
        for _ in range(self._max_batches):
            n = await self._db.execute("prune_job_content", {
                "request_keys": list(REQUEST_CONTENT), "result_keys": list(RESULT_CONTENT),
                "retention_secs": secs, "limit": self._batch})
            report.jobs_pruned += n
            if n < self._batch:
                break
            await asyncio.sleep(pause_s)
        for _ in range(self._max_batches):
            n = await self._db.execute("forget_webhook_deliveries", {"retention_secs": secs, "limit": self._batch})
            report.deliveries_dropped += n
            if n < self._batch:
                break
            await asyncio.sleep(pause_s)
        for _ in range(self._max_batches):
            folded = await self.fold_once(secs)
            if folded is None:
                break
            report.ledger_folded += folded
            if folded < self._batch:
                break
            await asyncio.sleep(pause_s)
        return report

    async def fold_once(self, retention_secs: float) -> int | None:
        """Fold one batch of the oldest ledger entries; None when another replica is folding."""
        async with self._db.transaction() as tx:
            if not (await tx.fetchone("try_lock_ledger_fold"))["locked"]:
                return None
            await tx.fetchone("allow_ledger_fold")
            row = await tx.fetchone("fold_ledger", {"retention_secs": retention_secs, "limit": self._batch})
        return int(row["folded"])
