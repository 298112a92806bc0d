"""The node's slot table: which assignments hold a slot, admission up to max concurrency, exact release."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import protocol

#: How many cancels for attempts this node has not seen (yet) it remembers, so the late assignment is refused.
_EARLY_CANCELS = 1024


@dataclass(slots=True)
class RunningJob:
    """One accepted attempt: it holds a slot from admission until released (exactly once)."""

    assignment: protocol.Assignment
    task: asyncio.Task | None = None
    #: Set by a cancel; the job's task reads it, so a cancel that arrives before the task first runs still counts.
    cancel_reason: str | None = None
    #: True once the task's body runs; before that, cancelling the task would skip its cleanup entirely.
    started: bool = False
    #: This job's admission number in this agent process (1, 2, ...): its reply and later advertisements carry it.
    admitted: int = 0
    chunks: int = 0
    parts: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int]:
        return (self.assignment.job_id, self.assignment.attempt)


class SlotTable:
    """Running jobs by id, bounded by `slots`; plus the attempts accepted whose outcome is not yet stored.

    Invariants (tests/unit/test_slots_state.py checks them over shuffled event orders):
    `len(running) <= slots`; a job leaves `running` exactly once, whatever the order of admit, cancel,
    task start and task end; `unsettled` holds a job from admission until its outcome is stored.
    """

    def __init__(self, slots: int, *, on_change: Callable[[int], None] | None = None) -> None:
        self.slots = slots
        self.running: dict[str, RunningJob] = {}
        #: Jobs accepted whose outcome is not yet stored on JetStream (advertised as `running`).
        self.unsettled: set[str] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        #: Assignments admitted so far (advertised as `admitted`).
        self.admitted = 0
        self._on_change = on_change
        #: Cancels for offers not running here (yet): (job, attempt, "") for every lease of that attempt, or
        #: (job, 0, lease) for one offer (a lease is unique per offer; an attempt number may be offered again).
        self._early_cancels: OrderedDict[tuple[str, int, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.running)

    def refusal(self, a: protocol.Assignment, *, draining: bool, serves: Callable[[str], bool]) -> tuple[str, str] | None:
        """Why this assignment cannot run here now (reason, detail), or None when it can."""
        if draining:
            return "draining", "node is draining"
        if (a.job_id, a.attempt, "") in self._early_cancels or (a.job_id, 0, a.lease) in self._early_cancels:
            return "cancelled", "the job was cancelled before its assignment arrived"
        if a.job_id in self.running:
            return "at_capacity", "job already running here"
        if len(self.running) >= self.slots:
            return "at_capacity", f"{len(self.running)}/{self.slots} slots busy"
        if not serves(a.model):
            return "model_unavailable", f"engine does not serve {a.model}"
        return None

    def admit(self, a: protocol.Assignment) -> RunningJob:
        """Take a slot for an accepted assignment (the caller checked refusal() first)."""
        self.admitted += 1
        job = RunningJob(a, admitted=self.admitted)
        self.running[a.job_id] = job
        self.unsettled.add(a.job_id)
        self.idle.clear()
        self._changed()
        return job

    def release(self, job: RunningJob) -> bool:
        """Free the job's slot; True the first time, False when it was already released (idempotent)."""
        if self.running.get(job.assignment.job_id) is not job:
            return False
        del self.running[job.assignment.job_id]
        if not self.running:
            self.idle.set()
        self._changed()
        return True

    def settle(self, job: RunningJob) -> None:
        """The job's outcome is stored: it no longer needs to be reported as held."""
        if self.running.get(job.assignment.job_id) is None:
            self.unsettled.discard(job.assignment.job_id)

    def cancel(self, job_id: str, attempt: int, reason: str, lease: str = "") -> RunningJob | None:
        """Ask a running attempt to stop; a cancel for an attempt not seen yet refuses it when it arrives."""
        job = self.running.get(job_id)
        if job is None or job.assignment.attempt != attempt or (lease and job.assignment.lease != lease):
            # Not the run here (none, or another offer of the job): refuse that offer if it arrives later.
            self._early_cancels[(job_id, 0, lease) if lease else (job_id, attempt, "")] = None
            while len(self._early_cancels) > _EARLY_CANCELS:
                self._early_cancels.popitem(last=False)
            return None
        stop(job, reason)
        return job

    def stop_all(self, reason: str) -> None:
        for job in list(self.running.values()):
            stop(job, reason)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(len(self.running))


def stop(job: RunningJob, reason: str) -> None:
    """Stop one job: set its reason first (read by a task that has not started yet), then interrupt a started one."""
    if job.cancel_reason is not None:
        return
    job.cancel_reason = reason
    if job.started and job.task is not None and not job.task.done():
        job.task.cancel()
