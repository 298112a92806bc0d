"""The last hour of this replica's own Prometheus metrics, sampled every few seconds for the admin console.

Also stamps the replica in PostgreSQL at each sample, so every replica's health shows on any replica's
console. Memory is bounded: one hour of samples.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

import structlog

from control_plane.lib.metrics import ControlPlaneMetrics

log = structlog.get_logger("control_plane.console")

WINDOW_S = 3600.0


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # wall clock, seconds
    finished: float  # jobs that ended (completed or failed), cumulative
    ttft_sum: float  # seconds, cumulative, over completed jobs with a measured TTFT
    ttft_count: float
    failures: dict[str, float] = field(default_factory=dict)  # error -> cumulative count


def read(metrics: ControlPlaneMetrics, now: float) -> Sample:
    """The cumulative figures the console charts, read from the replica's registry."""
    finished, failures = 0.0, {}
    for family in metrics.jobs_finished.collect():
        for s in family.samples:
            if not s.name.endswith("_total"):
                continue
            finished += s.value
            if s.labels.get("status") == "failed":
                reason = s.labels.get("error") or "unknown"
                failures[reason] = failures.get(reason, 0.0) + s.value
    ttft_sum = ttft_count = 0.0
    for family in metrics.ttft.collect():
        for s in family.samples:
            if s.name.endswith("_sum"):
                ttft_sum = s.value
            elif s.name.endswith("_count"):
                ttft_count = s.value
    return Sample(now, finished, ttft_sum, ttft_count, failures)


@dataclass(frozen=True, slots=True)
class Minute:
    """One minute of the last hour: jobs ended per second and mean TTFT (None: no completed job measured)."""

    start: float
    jobs_per_s: float | None
    ttft_ms: float | None


class MetricsHistory:
    """A ring of samples over the last hour, and the per-minute series and failure counts derived from it."""

    def __init__(self, metrics: ControlPlaneMetrics, *, interval_s: float = 5.0, clock=time.time) -> None:
        self._metrics = metrics
        self._clock = clock
        self.interval_s = interval_s
        self._samples: deque[Sample] = deque(maxlen=int(WINDOW_S / interval_s) + 2)

    def sample(self) -> Sample:
        s = read(self._metrics, self._clock())
        self._samples.append(s)
        return s

    def minutes(self, count: int = 60) -> list[Minute]:
        """`count` minutes ending now, oldest first; minutes before the first sample have no data (None)."""
        now = self._clock()
        samples = list(self._samples) + [read(self._metrics, now)]
        out = []
        for i in range(count, 0, -1):
            start, end = now - i * 60.0, now - (i - 1) * 60.0
            inside = [s for s in samples if start <= s.at <= end]
            before = [s for s in samples if s.at < start]
            first = before[-1] if before else (inside[0] if inside else None)
            last = inside[-1] if inside else None
            if first is None or last is None or last.at <= first.at:
                out.append(Minute(start, None, None))
                continue
            jobs = last.finished - first.finished
            n = last.ttft_count - first.ttft_count
            ttft = (last.ttft_sum - first.ttft_sum) / n * 1000 if n > 0 else None
            out.append(Minute(start, jobs / (last.at - first.at), ttft))
        return out

    def failures_last_hour(self) -> dict[str, int]:
        """Failed jobs by error over the last hour (since this replica started, when that is more recent)."""
        now = self._clock()
        current = read(self._metrics, now)
        base = next((s for s in self._samples if s.at >= now - WINDOW_S), None)
        out = {}
        for reason, value in current.failures.items():
            delta = value - (base.failures.get(reason, 0.0) if base else 0.0)
            if delta > 0:
                out[reason] = int(delta)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


async def run(history: MetricsHistory, runtime, sessions) -> None:
    """Sample every interval; stamp this replica in PostgreSQL; purge dead sessions every few minutes."""
    started = datetime.now(timezone.utc)
    last_purge = 0.0
    while True:
        history.sample()
        try:
            await runtime.db.execute("console_replica_stamp", {
                "replica_id": runtime.settings.replica_id, "started_at": started, "nats_ok": runtime.bus.connected,
                "nodes_online": runtime.registry.online_count(), "queued": runtime.dispatcher.queued_count()})
            if time.monotonic() - last_purge > 300:
                last_purge = time.monotonic()
                await sessions.purge()
        except Exception as exc:  # PostgreSQL down: the console shows it; keep sampling
            log.warning("console_replica_stamp_failed", error=str(exc))
        await asyncio.sleep(history.interval_s)
