"""Places jobs on nodes: per-model FIFO queues, assignment offers over NATS, requeue on refusal or loss."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

import protocol
from protocol import subjects
from control_plane.bus import Bus, BusError, NoResponders
from control_plane.lib.metrics import ControlPlaneMetrics
from control_plane.scheduler import placement
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database, StoreError
from control_plane.trust.service import TrustService

log = structlog.get_logger("control_plane.dispatcher")


@dataclass(slots=True)
class QueuedJob:
    """A pending job this replica holds and is trying to place."""

    id: str
    model: str
    kind: str
    request: dict[str, Any]
    deadline: float  # unix seconds
    attempt: int = 1
    pinned_node_id: str | None = None
    tried: set[str] = field(default_factory=set)

    @classmethod
    def from_row(cls, row: dict[str, Any], *, attempt: int) -> QueuedJob:
        deadline = row["deadline"]
        return cls(
            id=row["id"], model=row["model"], kind=row.get("kind") or "chat", request=row["request"],
            deadline=deadline.timestamp() if isinstance(deadline, datetime) else float(deadline),
            attempt=attempt, pinned_node_id=row.get("pinned_node_id"),
        )

    @property
    def needs(self) -> tuple[str, ...]:
        """Capabilities the job's model must have on the node (tools, vision, logprobs ...; embeddings for embed jobs)."""
        needs = tuple(self.request.get("needs") or ())
        return ("embeddings", *needs) if self.kind == "embed" else needs

    @property
    def probe(self) -> bool:
        """A known-answer probe (control_plane/trust): the only job a quarantined node may get."""
        return bool((self.request.get("trust") or {}).get("probe"))

    def assignment(self, lease: str) -> protocol.Assignment:
        req = self.request
        params = req.get("params") or {}
        extra = {k: params[k] for k in _EXTRA_PARAMS if params.get(k) is not None}
        return protocol.Assignment(
            job_id=self.id, attempt=self.attempt, lease=lease, model=self.model, kind=self.kind,
            messages=tuple(_message(m) for m in req.get("messages", ())),
            inputs=tuple(req.get("inputs", ())),
            params=protocol.GenerationParams(
                max_tokens=params.get("max_tokens", 512), temperature=params.get("temperature", 0.7),
                top_p=params.get("top_p", 1.0), stop=tuple(params.get("stop") or ()), seed=params.get("seed"),
                format=params.get("format"), **extra,
            ),
            deadline=self.deadline, stream=self.streamed,
        )

    @property
    def streamed(self) -> bool:
        """Whether the node publishes the job's token chunks. Any job of the native API may be streamed
        (GET /api/v1/jobs/{id}/stream, whatever `stream` it was submitted with), so its chunks always go out; a
        non-streamed OpenAI-style request (/v1, and the Ollama API over it) only waits for the result, so its
        node publishes nothing but that. Such a job streamed anyway gets its text in one piece at the end."""
        req = self.request
        return bool(req.get("stream", True)) or req.get("api") != "openai"


#: Generation parameters a request payload may carry beyond the basic sampling ones (tools, logprobs ...).
_EXTRA_PARAMS = ("tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs", "frequency_penalty",
                 "presence_penalty", "logit_bias", "dimensions")


def _message(m: dict[str, Any]) -> protocol.ChatMessage:
    """A payload message on the wire; tool calls, tool results and images only when the message has them."""
    if len(m) == 2:  # role and content: the common case, kept cheap
        return protocol.ChatMessage(m["role"], m["content"])
    calls = tuple(protocol.ToolCall(c["id"], c["name"], c.get("arguments") or "{}") for c in m.get("tool_calls") or ())
    return protocol.ChatMessage(m["role"], m["content"], tool_calls=calls, tool_call_id=m.get("tool_call_id"),
                                name=m.get("name"), images=tuple(m.get("images") or ()))


@dataclass(slots=True)
class Placement:
    """An attempt this replica handed to a node: the outcome that ends it must carry these."""

    node_id: str
    lease: str
    attempt: int
    model: str
    #: The node answered the offer with "accepted" (before that, an outcome may belong to a reverted offer).
    accepted: bool = False
    #: Called once the node's answer to the offer is processed (accepted or not): a request holding the attempt's
    #: result, which arrived first, may then answer from it (jobs/early.py).
    on_decided: Callable[[], None] | None = None

    def decided(self) -> None:
        if self.on_decided is not None:
            self.on_decided()
            self.on_decided = None


#: Placements kept after their job ended, so a waiting request still finds the one its outcome answers.
_PLACEMENTS_KEPT = 20_000


class Dispatcher:
    """Owns this replica's pending queues and the job -> node reservations it made."""

    def __init__(self, db: Database, bus: Bus, registry: NodeRegistry, settings: Settings, *, clock=time.time,
                 metrics: ControlPlaneMetrics | None = None, trust: TrustService | None = None) -> None:
        #: The replica's metrics; every job component reaches them through its dispatcher.
        self.metrics = metrics or ControlPlaneMetrics()
        self._db = db
        self._bus = bus
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._trust = trust  # unanswered offers count against a node's reputation
        self._queues: dict[tuple[str, str | None], deque[QueuedJob]] = {}
        self._held: dict[str, QueuedJob] = {}  # job id -> queued or being offered
        self._offering: set[str] = set()  # job ids with an offer in flight from this replica
        self._placed: OrderedDict[str, Placement] = OrderedDict()  # job id -> its latest attempt placed here
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        #: Set by the runtime: moves a job that its model cannot serve to the next model of its fallback chain.
        self.fallback = None

    # -- queue -----------------------------------------------------------------------------------
    def enqueue(self, job: QueuedJob, *, front: bool = False, wake: bool = True) -> None:
        queue = self._queues.setdefault((job.model, job.pinned_node_id), deque())
        if front:
            queue.appendleft(job)
        else:
            queue.append(job)
        self._held[job.id] = job
        if wake:
            self._wake.set()

    def oversize(self, job: QueuedJob) -> tuple[int, int] | None:
        """(size, limit) when the job's assignment would not fit in one bus message, else None."""
        limit = self._bus.max_payload
        size = len(protocol.encode(job.assignment("0" * 16)))
        return (size, limit) if size > limit else None

    def wake(self) -> None:
        """Something changed (a slot freed, a node appeared): try the queues again."""
        self._wake.set()

    def held_ids(self) -> list[str]:
        return list(self._held)

    def offering(self, job_id: str) -> bool:
        """This replica is offering the job to a node right now (its reply or timeout decides what happens)."""
        return job_id in self._offering

    def _let_go(self, job: QueuedJob) -> None:
        """Stop holding this copy of the job (a newer copy of it, e.g. re-placed by the sweeper, stays held)."""
        if self._held.get(job.id) is job:
            del self._held[job.id]

    def queued_count(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def queued_for(self, model: str) -> int:
        """Unpinned jobs for one model waiting in this replica's queue."""
        return len(self._queues.get((model, None), ()))

    def forget(self, job_id: str) -> None:
        """Drop a job from this replica's hold (it was cancelled or finished elsewhere)."""
        self._held.pop(job_id, None)
        for queue in self._queues.values():
            for job in queue:
                if job.id == job_id:
                    queue.remove(job)
                    return

    # -- placing at submission ------------------------------------------------------------------
    def place_now(self, job_id: str, model: str, pinned_node_id: str | None, kind: str,
                  payload: dict[str, Any]) -> Placement | None:
        """A free node for a job being submitted, its slot reserved, so the job's row can be written already
        processing there (one commit instead of two); None when it must queue (no free node, or jobs of its
        model are waiting: first come, first served). Hand it to `offer_placed` after the commit, or to
        `unplace` if the submission fails."""
        if self._queues.get((model, pinned_node_id)):
            return None
        probe = QueuedJob(id="", model=model, kind=kind, request=payload, deadline=0.0, pinned_node_id=pinned_node_id)
        node_id = self._pick(probe)
        if node_id is None:
            return None
        placed = Placement(node_id, secrets.token_hex(8), 1, model)
        self._registry.reserve(node_id, job_id, 1, placed.lease)
        return placed

    def unplace(self, job_id: str, placed: Placement) -> None:
        """Give back the slot of a placement whose job was never written."""
        self._registry.release(placed.node_id, job_id, placed.attempt, placed.lease)

    def offer_placed(self, job: QueuedJob, placed: Placement) -> None:
        """Offer a job whose row already records its attempt on `placed`'s node."""
        self._held[job.id] = job
        self._spawn(self._offer(job, placed, recorded=True))

    def placement_of(self, job_id: str) -> Placement | None:
        """The latest attempt of a job this replica placed (kept a while after the job ended)."""
        return self._placed.get(job_id)

    def _remember(self, job_id: str, placed: Placement) -> None:
        self._placed[job_id] = placed
        self._placed.move_to_end(job_id)
        while len(self._placed) > _PLACEMENTS_KEPT:
            self._placed.popitem(last=False)

    async def run(self) -> None:
        """Place queued jobs whenever woken; never returns until cancelled."""
        while True:
            try:  # asyncio.timeout: on Python 3.11 wait_for drops a cancellation that lands with a wake-up
                async with asyncio.timeout(self._settings.sweep_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch_loop_error")

    async def _drain(self) -> None:
        now = self._clock()
        for key in list(self._queues):
            queue = self._queues[key]
            while queue:
                job = queue[0]
                if job.deadline <= now:
                    queue.popleft()
                    await self._expire(job)
                    continue
                if self.fallback is not None and self.fallback.wants_switch(job):
                    queue.popleft()  # its model cannot serve it: the next model of its fallback chain will
                    self._spawn(self.fallback.switch(job, self))
                    continue
                node_id = self._pick(job)
                if node_id is None:
                    break  # FIFO per model: later jobs wait behind the head
                queue.popleft()
                placed = Placement(node_id, secrets.token_hex(8), job.attempt, job.model)
                self._registry.reserve(node_id, job.id, job.attempt, placed.lease)
                self._spawn(self._offer(job, placed, recorded=False))
            if not queue:
                del self._queues[key]

    def _pick(self, job: QueuedJob) -> str | None:
        if job.pinned_node_id is not None:
            view = self._registry.get(job.pinned_node_id)
            if view is None or view.free_slots <= 0:
                return None
        found = placement.candidates(
            self._registry, job.model, pinned=job.pinned_node_id, exclude=job.tried, limit=1, needs=job.needs,
            probe=job.probe,
        )
        if not found and job.tried:
            # Nodes already tried are a last resort, not excluded: a lone node that restarted must get its job back.
            found = placement.candidates(self._registry, job.model, pinned=job.pinned_node_id, limit=1,
                                         needs=job.needs, probe=job.probe)
            if found:
                job.tried.clear()
        if not found:
            return None
        return found[0].node_id

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("placement_task_failed", error=f"{type(exc).__name__}: {exc}",
                      detail="the job stays pending; the sweeper re-adopts it when its claim expires",
                      exc_info=exc)

    # -- offering --------------------------------------------------------------------------------
    async def _offer(self, job: QueuedJob, placed: Placement, *, recorded: bool) -> None:
        self._offering.add(job.id)
        try:
            await self._offer_once(job, placed, recorded)
        finally:
            self._offering.discard(job.id)

    async def _offer_once(self, job: QueuedJob, placed: Placement, recorded: bool) -> None:
        """Offer one attempt to a node under the placement's fresh lease. `recorded`: the attempt is already on
        the job's row (at submission); otherwise it is recorded here first."""
        node_id, lease = placed.node_id, placed.lease
        bound = log.bind(job_id=job.id, node_id=node_id, attempt=job.attempt)
        if not recorded:
            try:
                started = await self._db.execute(
                    "start_attempt", {"id": job.id, "attempt": job.attempt, "lease": placed.lease,
                                      "node_id": node_id}
                )
            except StoreError as exc:
                self._registry.release(node_id, job.id, job.attempt, lease)
                bound.warning("placement_db_error", error=str(exc), action="job stays queued; retrying")
                self.enqueue(job, front=True)
                return
            if not started:
                # Cancelled or finished meanwhile: nothing to place.
                self._registry.release(node_id, job.id, job.attempt, lease)
                self._let_go(job)
                return
        self._remember(job.id, placed)
        unreachable = False
        try:
            reply = await self._bus.assign(node_id, job.assignment(lease), self._settings.assign_timeout_s)
        except NoResponders:
            reply, unreachable = None, True
        except BusError:
            reply = None
        self.metrics.offers.labels(answer="accepted" if reply is not None and reply.accepted
                                   else (reply.reason or "rejected") if reply is not None
                                   else "unreachable" if unreachable else "unanswered").inc()
        if reply is not None and reply.accepted:
            # The slot stays reserved in the registry until the job is seen ending (which may already have
            # happened: a short job's outcome can arrive before this reply is processed) or an advertisement
            # built after its admission no longer lists it.
            self._registry.accepted(node_id, job.id, job.attempt, reply.admitted)
            placed.accepted = True
            placed.decided()
            self._let_go(job)
            bound.info("job_assigned")
            return
        unanswered = reply is None and not unreachable
        if unreachable:
            # Nobody received the offer (the agent is not connected): no attempt was used, and the node gets no
            # more offers until it advertises again.
            self._registry.mark_unreachable(node_id)
            bound.warning("node_unreachable", detail="no agent listening for its assignments; no offers to it until "
                                                     "it advertises again")
        elif unanswered:
            bound.warning("assignment_unanswered", detail="node did not answer in time; trying the next node")
            if self._trust is not None:
                self._trust.unanswered(node_id)
        else:
            bound.info("assignment_rejected", reason=reply.reason, detail=reply.detail)
            if reply.reason == "at_capacity":
                self._registry.mark_full(node_id)
        job.tried.add(node_id)
        # No offer that was not accepted uses an attempt: the number counts runs. A silent node may have started
        # this one anyway, but its run is told apart by its lease (unique per offer), which its chunks and its
        # outcome carry: the row moves on to the next offer's lease, so that run is never shown, recorded or
        # charged, and it is told to stop.
        try:
            reverted = await self._db.execute(
                "revert_attempt",
                {"id": job.id, "lease": lease, "claimed_by": self._settings.replica_id,
                 "claim_secs": self._settings.claim_secs},
            )
        except StoreError as exc:
            bound.warning("revert_failed", error=str(exc), detail="the sweeper will re-place the job")
            reverted = False
        if not reverted and unanswered and await self._runs_anyway(job.id, lease):
            # The node's tokens for this offer already reached a client: it runs the job (its reply was late or
            # lost), and the job can no longer move. Keep it there, as if the reply had said accepted.
            placed.accepted = True
            placed.decided()
            self._let_go(job)
            bound.warning("assignment_unanswered_but_running", detail="its first token reached a client; the job "
                                                                      "stays on the node")
            return
        if self._placed.get(job.id) is placed:
            del self._placed[job.id]
        placed.decided()
        self._registry.release(node_id, job.id, job.attempt, lease)
        if unanswered:
            await self._bus_quiet_cancel(node_id, job, lease)
        if not reverted:
            # The row is no longer this offer's (cancelled, lost and re-placed by the sweeper, or the revert
            # failed): this copy is stale, so queueing it would place the job twice.
            self._let_go(job)
            return
        if self._pick_possible(job):
            self.enqueue(job, front=True)
        else:
            # Every candidate refused once: start over with all of them at the next change or sweep.
            job.tried.clear()
            self.enqueue(job, front=True, wake=False)

    async def _runs_anyway(self, job_id: str, lease: str) -> bool:
        """The job still runs under this offer's lease and its first token reached a client (so it was not
        reverted: a client never sees two runs)."""
        try:
            row = await self._db.fetchone("get_job_any", {"id": job_id})
        except StoreError:
            return False
        return (row is not None and row["status"] == "processing" and row["lease"] == lease
                and row["first_token_at"] is not None)

    def _pick_possible(self, job: QueuedJob) -> bool:
        return bool(placement.candidates(self._registry, job.model, pinned=job.pinned_node_id, exclude=job.tried, limit=1,
                                         needs=job.needs, probe=job.probe))

    async def _bus_quiet_cancel(self, node_id: str, job: QueuedJob, lease: str) -> None:
        await self.cancel_on_node(node_id, job.id, job.attempt, reason="unanswered", lease=lease)

    async def cancel_on_node(self, node_id: str, job_id: str, attempt: int, *, reason: str = "cancelled",
                             lease: str = "") -> None:
        """Tell a node to stop one attempt of a job (best effort: a gone node has nothing to stop)."""
        try:
            await self._bus.publish(subjects.node_cancel(node_id), protocol.Cancel(job_id, attempt, reason, lease))
        except Exception as exc:
            log.warning("cancel_not_sent", job_id=job_id, node_id=node_id, error=str(exc))

    async def _expire(self, job: QueuedJob) -> None:
        self._let_go(job)
        try:
            await self._db.execute(
                "fail_pending",
                {"id": job.id, "error": "no_capacity",
                 "error_message": f"No nodes available with model {job.model} before the job's deadline"},
            )
            log.info("job_expired_in_queue", job_id=job.id, model=job.model)
        except StoreError as exc:
            log.warning("expire_failed", job_id=job.id, error=str(exc))

    # -- outcomes --------------------------------------------------------------------------------
    def job_ended(self, job_id: str, node_id: str | None, attempt: int | None = None, lease: str = "") -> None:
        """A job's attempt on a node ended (any outcome, whoever placed it): its slot is free again."""
        self._registry.ended(node_id, job_id, attempt, lease or "")
        self._wake.set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
