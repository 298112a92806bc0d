"""Assignments and cancels from control planes: accept up to the slots, run each job, always free its slot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

import protocol
from node_agent.metrics import NodeMetrics
from node_agent.publishing import Publisher
from node_agent.runner import JobRunner
from node_agent.slots import RunningJob, SlotTable

log = structlog.get_logger("node_agent")


class Assignments:
    """Handles `assign` requests and `cancel` messages for one node; owns the job tasks."""

    def __init__(self, node_id: str, slots: SlotTable, runner: JobRunner, publisher: Publisher, metrics: NodeMetrics,
                 *, draining: Callable[[], bool], serves: Callable[[str], bool]) -> None:
        self.node_id = node_id
        self.slots = slots
        self.runner = runner
        self.publisher = publisher
        self.metrics = metrics
        self._draining = draining
        self._serves = serves
        self.jobs_served = 0
        self.outcomes: dict[str, int] = {}
        #: Every job task until it ends: running, or storing its outcome after its slot was freed.
        self._tasks: set[asyncio.Task] = set()
        self._log = log.bind(node_id=node_id)

    async def on_assign(self, msg) -> None:
        try:
            assignment = protocol.decode(msg.data, protocol.Assignment)
        except protocol.DecodeError as exc:
            self._log.warning("malformed_assignment", error=str(exc))
            await msg.respond(protocol.encode(protocol.AssignmentReply(
                job_id="", attempt=0, accepted=False, node_id=self.node_id, reason="bad_assignment", detail=str(exc))))
            return
        refused = self.slots.refusal(assignment, draining=self._draining(), serves=self._serves)
        reason, detail = refused if refused is not None else (None, None)
        admitted = self.start(assignment).admitted if refused is None else 0
        reply = protocol.AssignmentReply(job_id=assignment.job_id, attempt=assignment.attempt,
                                         accepted=refused is None, node_id=self.node_id, reason=reason, detail=detail,
                                         admitted=admitted)
        await msg.respond(protocol.encode(reply))

    def start(self, assignment: protocol.Assignment) -> RunningJob:
        """Admit the job and start its task; the slot is freed when the task ends, however it ends."""
        job = self.slots.admit(assignment)
        job.task = asyncio.create_task(self._run(job), name=f"job {assignment.job_id}")
        self._tasks.add(job.task)
        job.task.add_done_callback(self._tasks.discard)
        # A task cancelled before its first step never runs its body: free the slot here too (idempotent).
        job.task.add_done_callback(lambda _task, job=job: self._task_done(job))
        return job

    def _task_done(self, job: RunningJob) -> None:
        self._release(job)
        if not job.started:  # nothing will be published for it: stop reporting it as held
            self.slots.settle(job)

    async def on_cancel(self, msg) -> None:
        try:
            cancel = protocol.decode(msg.data, protocol.Cancel)
        except protocol.DecodeError as exc:
            self._log.warning("malformed_cancel", error=str(exc))
            return
        self.slots.cancel(cancel.job_id, cancel.attempt, cancel.reason or "cancelled", cancel.lease)

    def _release(self, job: RunningJob) -> None:
        if self.slots.release(job):
            self.metrics.active_slots.set(len(self.slots))

    async def _run(self, job: RunningJob) -> None:
        job.started = True
        a = job.assignment
        try:
            outcome = await self.runner.run(job)
        finally:
            self._release(job)
        self.jobs_served += 1
        kind = "completed" if isinstance(outcome, protocol.JobResult) else (
            "cancelled" if outcome.error == "cancelled" else "failed")
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        self.metrics.job_finished(kind, getattr(outcome, "error", None))
        self._log.info("job_finished", job_id=a.job_id, attempt=a.attempt, model=a.model,
                       outcome=type(outcome).__name__, error=getattr(outcome, "error", None), chunks=job.chunks)
        try:
            await self.publisher.outcome(outcome)
        finally:
            self.slots.settle(job)

    @property
    def pending(self) -> int:
        """Job tasks not ended yet: running, or storing an outcome."""
        return len(self._tasks)

    async def wait_all(self, timeout: float | None = None) -> int:
        """Wait for every job task, outcome stored included; past `timeout` cancel the rest and return how many
        were cancelled (their outcomes were not stored: the control plane re-places or fails those jobs)."""
        tasks = set(self._tasks)
        if not tasks:
            return 0
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        return len(late)
