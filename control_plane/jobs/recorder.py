"""Records job outcomes from the durable JetStream consumer: write the row first, then ack."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog

import protocol
from control_plane.bus import Bus
from control_plane.jobs import typed_output
from control_plane.jobs.dispatcher import Dispatcher, QueuedJob
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database, StoreError
from control_plane.store.database import jsonb
from control_plane.trust import usage
from control_plane.trust.service import TrustService
from control_plane.trust.tokenizers import TokenCounter, tool_call_texts
from protocol import subjects

log = structlog.get_logger("control_plane.recorder")

#: Failure codes that mean the engine never started on the job, so another node may try it.
RETRYABLE_BEFORE_TOKENS = {"engine_unavailable", "engine_busy", "model_unavailable", "draining", "node_shutdown"}


def result_payload(outcome: protocol.JobResult) -> dict[str, Any]:
    """The `result` a completed job's row keeps (and a /v1 answer is built from)."""
    result = {
        "content": outcome.content, "finish_reason": outcome.finish_reason,
        "usage": {"prompt_tokens": outcome.usage.prompt_tokens,
                  "completion_tokens": outcome.usage.completion_tokens},
        "ttft_ms": outcome.timings.ttft_ms, "duration_ms": outcome.timings.duration_ms,
        "tokens_per_second": outcome.timings.tokens_per_second, "chunks": outcome.chunks,
    }
    if outcome.embeddings is not None:
        result["embeddings"] = [list(v) for v in outcome.embeddings.vectors]
    if outcome.tool_calls:  # the API says finish_reason "tool_calls" for these
        result["tool_calls"] = [{"id": c.id, "type": "function",
                                 "function": {"name": c.name, "arguments": c.arguments}}
                                for c in outcome.tool_calls]
        result["finish_reason"] = "tool_calls"
    if outcome.logprobs is not None:
        result["logprobs"] = [msgspec.to_builtins(t) for t in outcome.logprobs]
    return result


class OutcomeRecorder:
    """Consumes results and failures; idempotent by (job, attempt, lease, node)."""

    def __init__(self, db: Database, bus: Bus, registry: NodeRegistry, dispatcher: Dispatcher, settings: Settings,
                 *, trust: TrustService | None = None, tokens: TokenCounter | None = None) -> None:
        self._db = db
        self._trust = trust  # judges what the node returned (usage, speed, spot checks)
        self._tokens = tokens  # the control plane's own token counts, for the models it has a tokenizer for
        self._bus = bus
        self._registry = registry
        self._dispatcher = dispatcher
        self._settings = settings
        self._waiters: dict[str, list[asyncio.Future]] = {}
        #: True while the results stream and its durable consumer exist and this replica consumes them.
        self.ready = False
        #: Set once the first subscription attempt is over (Runtime.start waits for it: /readyz is then true).
        self.checked = asyncio.Event()
        #: Seconds between checks that the results stream and consumer still exist.
        self._check_s = 2.0

    # -- local observers (every replica sees every outcome on core NATS) -------------------------
    def seen(self, outcome: protocol.JobOutcome) -> None:
        """An outcome arrived on core NATS (the relay's subscription, checked against its subject): free the
        attempt's reservation here at once, whichever replica records it."""
        self._dispatcher.job_ended(outcome.job_id, outcome.node_id, outcome.attempt, outcome.lease)

    def waiter(self, job_id: str) -> asyncio.Future:
        """A future resolved with the job's final row once this replica records or sees it recorded."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        return fut

    def forget_waiter(self, job_id: str, fut: asyncio.Future) -> None:
        """Drop a waiter whose caller went away or learned the outcome elsewhere (e.g. another replica recorded it)."""
        waiters = self._waiters.get(job_id)
        if waiters is not None and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                del self._waiters[job_id]

    def _resolve(self, job_id: str, row: dict[str, Any]) -> None:
        for fut in self._waiters.pop(job_id, ()):
            if not fut.done():
                fut.set_result(row)

    # -- durable consumer ----------------------------------------------------------------------
    async def run(self) -> None:
        """Consume outcomes from the shared durable consumer; re-subscribe if NATS lost it (e.g. a wiped server)."""
        limit = asyncio.Semaphore(256)
        tasks: set[asyncio.Task] = set()

        async def on_message(msg) -> None:
            await limit.acquire()
            task = asyncio.create_task(self._handle(msg))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), limit.release()))

        sub = None
        while True:
            try:
                if sub is None or not await self._bus.results_consumer_exists():
                    self.ready = False
                    if sub is not None:
                        log.warning("results_consumer_missing", action="recreating the stream and consumer")
                        try:
                            await sub.unsubscribe()
                        except Exception:  # its consumer is gone already
                            pass
                        sub = None
                    await self._bus.ensure_streams()  # recreates a deleted stream; an existing one is kept
                    sub = await self._bus.results_subscription(on_message)
                    log.info("results_consumer_subscribed")
                self.ready = True
                self.checked.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ready = False
                log.warning("results_subscribe_failed", error=str(exc) or type(exc).__name__, action="retrying in 1s")
                self.checked.set()
                if sub is not None:
                    try:
                        await sub.unsubscribe()
                    except Exception:  # NATS is down or the consumer is gone: nothing to undo
                        pass
                sub = None
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(self._check_s)

    async def _handle(self, msg) -> None:
        try:
            outcome = protocol.decode(msg.data, protocol.JobOutcome)
        except protocol.DecodeError as exc:
            log.error("malformed_outcome_dropped", subject=msg.subject, error=str(exc))
            await msg.term()
            return
        if subjects.publisher_and_job(msg.subject) != (outcome.node_id, outcome.job_id):
            # The subject names the node that published it (server-enforced); an outcome claiming another
            # node or job is forged.
            log.warning("forged_outcome_dropped", subject=msg.subject, job_id=outcome.job_id,
                        node_id=outcome.node_id)
            await msg.term()
            return
        try:
            await self.record(outcome)
        except StoreError as exc:
            log.warning("outcome_not_recorded", job_id=outcome.job_id, error=str(exc),
                        action="not acked; JetStream will redeliver")
            await msg.nak(delay=1.0)
            return
        # Core NATS (observe) may have missed it, e.g. across a NATS restart: free the slot here too (idempotent).
        self._dispatcher.job_ended(outcome.job_id, outcome.node_id, outcome.attempt, outcome.lease)
        await msg.ack()

    async def _keep_partial(self, outcome: protocol.JobOutcome, content: str) -> None:
        """A cancelled job keeps what its running attempt produced before it stopped."""
        await self._db.execute("keep_cancelled_partial", {
            "id": outcome.job_id, "attempt": outcome.attempt, "lease": outcome.lease,
            "result": jsonb({"content": content, "usage": {"prompt_tokens": outcome.usage.prompt_tokens,
                                                           "completion_tokens": outcome.usage.completion_tokens}}),
            "prompt_tokens": outcome.usage.prompt_tokens, "completion_tokens": outcome.usage.completion_tokens,
        })

    async def _completion_bounds(self, outcome: protocol.JobResult) -> dict[str, int] | None:
        """Model -> the most completion tokens the result's text can hold, for each model the job may be of:
        the one this replica placed it with, else those its node serves (the recording statement keeps the job's
        own; the row is not read first)."""
        if self._tokens is None or outcome.embeddings is not None:
            return None
        placed = self._dispatcher.placement_of(outcome.job_id)
        if placed is not None and placed.node_id == outcome.node_id:
            models: list[str] = [placed.model]
        else:
            node = self._registry.get(outcome.node_id)
            models = list(node.models) if node is not None else []
        models = [m for m in models if self._tokens.covers(m)]
        if not models:
            return None
        return await usage.result_completion_bounds(self._tokens, models, outcome.content,
                                                    tool_call_texts(outcome.tool_calls))

    async def record(self, outcome: protocol.JobOutcome) -> dict | None:
        """Write the outcome to the job row if it belongs to the current attempt; returns the row or None."""
        bound = log.bind(job_id=outcome.job_id, node_id=outcome.node_id, attempt=outcome.attempt)
        key = {"id": outcome.job_id, "attempt": outcome.attempt, "lease": outcome.lease, "node_id": outcome.node_id}
        if isinstance(outcome, protocol.JobResult):
            result = result_payload(outcome)
            bounds = await self._completion_bounds(outcome)
            row = await self._db.fetchone("complete_job", {
                **key, "result": jsonb(result), "prompt_tokens": outcome.usage.prompt_tokens,
                "completion_tokens": outcome.usage.completion_tokens, "first_token_at": None,
                "completion_bounds": jsonb(bounds) if bounds else None,
            })
            if row is None:  # a job with a response_schema: validated, then completed or failed
                row = await typed_output.complete(self._db, outcome, result, completion_bounds=bounds)
            if row is None:
                await self._keep_partial(outcome, outcome.content)
                bound.info("stale_result_ignored", detail="job is not processing this attempt/lease on this node")
                return None
            self._registry.record_outcome(outcome.node_id, True)
            if self._trust is not None:
                self._trust.completed(outcome, row)
            bound.info("job_completed", completion_tokens=outcome.usage.completion_tokens)
            self._dispatcher.metrics.jobs_finished.labels(status="completed", error="").inc()
            if outcome.timings.ttft_ms is not None:
                self._dispatcher.metrics.ttft.observe(outcome.timings.ttft_ms / 1000)
            self._resolve(outcome.job_id, row)
            return row
        # failure
        if outcome.retryable and outcome.attempt < self._settings.max_attempts and outcome.error in RETRYABLE_BEFORE_TOKENS:
            row = await self._db.fetchone("requeue_attempt", {
                "id": outcome.job_id, "attempt": outcome.attempt, "lease": outcome.lease,
                "claimed_by": self._settings.replica_id, "claim_secs": self._settings.claim_secs,
            })
            if row is not None:
                self._registry.record_outcome(outcome.node_id, False)
                if self._trust is not None:
                    self._trust.failed(outcome.node_id, outcome.error)
                bound.warning("attempt_failed_requeued", error=outcome.error, detail=outcome.message)
                job = QueuedJob.from_row(row, attempt=outcome.attempt + 1)
                job.tried.add(outcome.node_id)
                self._dispatcher.enqueue(job)
                return row
            return None
        row = await self._db.fetchone("fail_attempt", {
            **key, "error": outcome.error, "error_message": outcome.message,
            "result": jsonb({"content": outcome.partial_content,
                             "usage": {"prompt_tokens": outcome.usage.prompt_tokens,
                                       "completion_tokens": outcome.usage.completion_tokens}}),
            "prompt_tokens": outcome.usage.prompt_tokens, "completion_tokens": outcome.usage.completion_tokens,
        })
        if row is None:
            await self._keep_partial(outcome, outcome.partial_content)
            bound.info("stale_failure_ignored")
            return None
        self._registry.record_outcome(outcome.node_id, False)
        if self._trust is not None:
            self._trust.failed(outcome.node_id, outcome.error)
        bound.warning("job_failed", error=outcome.error, detail=outcome.message)
        self._dispatcher.metrics.jobs_finished.labels(status="failed", error=outcome.error).inc()
        self._resolve(outcome.job_id, row)
        return row
