"""What each node last said it holds (its `running` job ids), to find attempts a live node no longer has."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True)
class RunningReport:
    received_at: datetime
    running: frozenset[str]
    interval_s: float


@dataclass
class RunningReports:
    """node id -> its latest report; plus when each (job, attempt) was first found missing."""

    latest: dict[str, RunningReport] = field(default_factory=dict)
    missing_since: dict[tuple[str, int], datetime] = field(default_factory=dict)

    def record(self, node_id: str, received_at: datetime, running: tuple[str, ...] | None, interval_s: float) -> None:
        if running is None:  # agents that do not report are never judged by this
            return
        report = self.latest.get(node_id)
        if report is not None and len(running) == len(report.running) and all(j in report.running for j in running):
            # The same jobs as last time (at idle, always): updated in place, so a quiet node's heartbeat leaves no
            # new object behind for the collector to walk (see HeartbeatHandler._admit).
            report.received_at, report.interval_s = received_at, interval_s
        else:
            self.latest[node_id] = RunningReport(received_at, frozenset(running), interval_s)

    def vanished(self, job_id: str, attempt: int, node_id: str, assigned_at: datetime) -> bool:
        """True when two successive reports, both sent after the attempt was handed over, lack the job."""
        report = self.latest.get(node_id)
        key = (job_id, attempt)
        if report is None or assigned_at is None or report.received_at <= assigned_at:
            return False
        if job_id in report.running:
            self.missing_since.pop(key, None)
            return False
        first = self.missing_since.setdefault(key, report.received_at)
        if (report.received_at - first).total_seconds() >= 0.9 * report.interval_s:
            self.missing_since.pop(key, None)
            return True
        return False

    def forget_node(self, node_id: str) -> None:
        self.latest.pop(node_id, None)
