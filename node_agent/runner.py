"""Running one job on the engine: generation with coalesced token chunks, embeddings, and the outcome it ends with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing

import structlog

import protocol
from node_agent.engines.base import Completion, Delta, Engine, EngineError, GenerationFailed
from node_agent.metrics import NodeMetrics
from node_agent.rates import RollingRates
from node_agent.slots import RunningJob

log = structlog.get_logger("node_agent")

#: Failure codes a control plane may retry on another node when no token was produced.
RETRYABLE = {"engine_unavailable", "engine_busy", "model_unavailable", "node_shutdown"}

#: Publishes one token chunk of a job (core NATS; ordering is the caller's sequence number).
PublishChunk = Callable[[protocol.TokenChunk], Awaitable[None]]


class JobRunner:
    """Turns one accepted assignment into an outcome (JobResult or JobFailure); never raises but CancelledError."""

    def __init__(self, engine: Engine, *, node_id: str, engine_name: str, coalesce_ms: float,
                 rates: RollingRates, metrics: NodeMetrics, publish_chunk: PublishChunk) -> None:
        self.engine = engine
        self.node_id = node_id
        self.engine_name = engine_name
        self.coalesce_s = coalesce_ms / 1000.0
        self.rates = rates
        self.metrics = metrics
        self.publish_chunk = publish_chunk
        self.tokens_generated = 0

    async def run(self, job: RunningJob) -> protocol.JobOutcome:
        """The outcome of the job, including a failure for a stop (cancel, shutdown) or an engine error."""
        a = job.assignment
        started = time.monotonic()
        try:
            if job.cancel_reason is not None:  # cancelled between admission and the task's first step
                raise asyncio.CancelledError
            return await self._execute(job, started)
        except asyncio.CancelledError:
            if job.cancel_reason is None:
                raise  # not ours (the event loop is closing): let it through
            reason = job.cancel_reason
            return self.failure(job, reason, f"job stopped on node {self.node_id}: {reason}")
        except EngineError as exc:
            log.warning("job_engine_error", node_id=self.node_id, job_id=a.job_id, attempt=a.attempt,
                        error=exc.code, detail=str(exc))
            self.metrics.engine_errors.labels(code=exc.code).inc()
            return self.failure(job, exc.code, f"{self.engine_name} on node {self.node_id}: {exc}",
                                produced=exc.produced_tokens)
        except TimeoutError:
            return self.failure(job, "timeout", "the job passed its wall-clock deadline")
        except Exception as exc:
            log.exception("job_crashed", node_id=self.node_id, job_id=a.job_id, attempt=a.attempt)
            return self.failure(job, "internal_error", f"node agent error: {type(exc).__name__}: {exc}")

    def failure(self, job: RunningJob, code: str, message: str, *, produced: bool = False) -> protocol.JobFailure:
        a = job.assignment
        produced = produced or job.chunks > 0 or bool(job.parts)
        return protocol.JobFailure(
            job_id=a.job_id, attempt=a.attempt, lease=a.lease, node_id=self.node_id, error=code, message=message,
            partial_content="".join(job.parts), chunks=job.chunks,
            retryable=(not produced) and code in RETRYABLE,
        )

    async def _execute(self, job: RunningJob, started: float) -> protocol.JobOutcome:
        a = job.assignment
        remaining = a.deadline - time.time() if a.deadline else None
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            if a.kind == "embed":
                vectors, prompt_tokens = await self.engine.embed(a.model, a.inputs, dimensions=a.params.dimensions)
                if a.params.dimensions and any(len(v) != a.params.dimensions for v in vectors):
                    raise GenerationFailed(f"{a.model} returned vectors of {len(vectors[0])} dimensions, not the "
                                           f"{a.params.dimensions} asked for (the model cannot shorten them)")
                usage = protocol.Usage(prompt_tokens or 0, 0, prompt_tokens or 0)
                return protocol.JobResult(
                    job_id=a.job_id, attempt=a.attempt, lease=a.lease, node_id=self.node_id, usage=usage,
                    timings=protocol.Timings(duration_ms=(time.monotonic() - started) * 1000),
                    embeddings=protocol.EmbedOutput(tuple(tuple(v) for v in vectors)),
                )
            return await self._generate(job, started)

    async def _generate(self, job: RunningJob, started: float) -> protocol.JobResult:
        a = job.assignment
        coalesce = self.coalesce_s
        pending: list[str] = []
        last_flush = 0.0
        ttft = None
        completion = Completion()
        publish = self.publish_chunk
        lock = asyncio.Lock()  # one publisher at a time, so sequence numbers go out in order
        timer: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()

        async def flush() -> None:
            nonlocal last_flush, timer
            async with lock:
                if timer is not None:
                    timer.cancel()
                    timer = None
                if not pending:
                    return
                job.chunks += 1
                text = "".join(pending)
                pending.clear()
                last_flush = time.monotonic()
                await publish(protocol.TokenChunk(a.job_id, a.attempt, job.chunks, text, self.node_id, a.lease))

        def flush_later() -> None:
            # Held text goes out at most coalesce_ms after it arrived, even if the engine pauses.
            nonlocal timer
            if timer is None:
                timer = loop.call_later(coalesce, lambda: asyncio.ensure_future(flush()))

        # Nobody can stream the job (a non-streamed /v1 request waits for its result): no chunks, only the result.
        streamed = a.stream
        try:
            async with aclosing(self.engine.chat(a.model, a.messages, a.params)) as stream:
                async for item in stream:
                    if isinstance(item, Delta):
                        if not item.text:
                            continue
                        job.parts.append(item.text)
                        if not streamed:
                            if ttft is None:
                                ttft = (time.monotonic() - started) * 1000
                            continue
                        pending.append(item.text)
                        now = time.monotonic()
                        if ttft is None:
                            ttft = (now - started) * 1000
                            await flush()
                        elif now - last_flush >= coalesce:
                            await flush()
                        else:
                            flush_later()
                    else:
                        completion = item
        except EngineError:
            await flush()  # what the engine produced before failing reaches stream clients too
            raise
        finally:
            if timer is not None:
                timer.cancel()
        await flush()
        duration = (time.monotonic() - started) * 1000
        tps = completion.tokens_per_second
        self.rates.observe(a.model, tps)
        prompt = completion.prompt_tokens or 0
        generated = completion.completion_tokens if completion.completion_tokens is not None else len(job.parts)
        self.tokens_generated += generated
        self.metrics.tokens.labels(model=a.model).inc(generated)
        if (rate := self.rates.get(a.model)) is not None:
            self.metrics.tokens_per_second.labels(model=a.model).set(rate)
        return protocol.JobResult(
            job_id=a.job_id, attempt=a.attempt, lease=a.lease, node_id=self.node_id, content="".join(job.parts),
            finish_reason="length" if completion.finish_reason == "length" else "stop",
            usage=protocol.Usage(prompt, generated, prompt + generated),
            timings=protocol.Timings(ttft_ms=ttft, duration_ms=duration, tokens_per_second=tps),
            chunks=job.chunks, tool_calls=tuple(completion.tool_calls),
            logprobs=tuple(completion.logprobs) if completion.logprobs is not None else None,
        )
