"""The node agent's lifecycle: advertise, accept assignments up to its slots, run them, publish outcomes."""

from __future__ import annotations

import asyncio
import fnmatch
import random
import secrets
import time
from contextlib import aclosing
from dataclasses import dataclass, field

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS

import protocol
from node_agent import __version__
from node_agent.engines.base import Completion, Delta, Engine, EngineError, EngineModel
from node_agent.gpu import GpuProbe
from node_agent.metrics import NodeMetrics
from node_agent.rates import RollingRates
from node_agent.settings import NodeSettings
from node_agent.status_http import StatusServer
from protocol import subjects

log = structlog.get_logger("node_agent")

#: Failure codes a control plane may retry on another node when no token was produced.
_RETRYABLE = {"engine_unavailable", "engine_busy", "model_unavailable", "node_shutdown"}
#: The short generation `bench_on_start` runs per loaded model.
_BENCH_PROMPT = (protocol.ChatMessage(role="user", content="Describe the sea in two sentences."),)


def model_allowed(name: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> bool:
    """Denied if any deny glob matches; else allowed when the allow list is empty or any allow glob matches."""
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in deny):
        return False
    return not allow or any(fnmatch.fnmatchcase(name, pattern) for pattern in allow)


@dataclass(slots=True)
class RunningJob:
    assignment: protocol.Assignment
    task: asyncio.Task | None = None
    cancel_reason: str | None = None
    chunks: int = 0
    parts: list[str] = field(default_factory=list)


def reconnect_backoff(servers, server_info) -> tuple:
    """nats-py's reconnect hook: the server tried least, after an exponential, jittered wait (0.25 s .. 10 s)."""
    best = min(servers, key=lambda s: s.reconnects)
    delay = min(10.0, 0.25 * 2 ** min(best.reconnects, 6)) * random.uniform(0.8, 1.2)
    return best, delay


class NodeAgent:
    """One agent process: one NATS connection, one engine, a bounded set of running jobs."""

    def __init__(self, settings: NodeSettings, engine: Engine, *, node_id: str,
                 gpu_probe: GpuProbe | None = None, metrics: NodeMetrics | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.node_id = node_id
        self.boot_id = secrets.token_hex(6)
        self.state: str = "online"
        self.jobs: dict[str, RunningJob] = {}
        #: Jobs accepted whose outcome is not yet stored on JetStream (advertised as `running`).
        self.unsettled: set[str] = set()
        self.rates = RollingRates()
        self.models: list[EngineModel] = []
        #: Models the engine has that the allow/deny lists keep from being advertised.
        self.hidden_models: list[str] = []
        self.gpus: tuple[protocol.GpuInfo, ...] = ()
        self.gpu_probe = gpu_probe or GpuProbe()
        self.metrics = metrics or NodeMetrics()
        self.metrics.slots.set(settings.max_concurrency)
        self.status_server: StatusServer | None = None
        self.started_at = time.time()
        self.tokens_generated = 0
        self.outcomes: dict[str, int] = {}
        self.engine_ok = False
        self.engine_version: str | None = None
        self.nc: NATS | None = None
        self.js = None
        self.jobs_served = 0
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._engine_warned = False
        self._nats_errors_logged: dict[str, float] = {}
        self._log = log.bind(node_id=node_id)

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, advertise and serve until stop() (or drain) completes."""
        await self.refresh_engine()
        await self.refresh_gpus()
        if self.settings.metrics_port:
            self.status_server = StatusServer(self.settings.metrics_host, self.settings.metrics_port,
                                              metrics=self.metrics.render, status=self.status)
            await self.status_server.start()
        try:
            if self.settings.bench_on_start:
                await self.bench()
            self.nc = await self._connect()
        except BaseException:
            await self._close_side_services()
            raise
        if self.nc is None:  # stopped before NATS ever answered
            await self._close_side_services()
            await self.engine.aclose()
            return
        self.js = self.nc.jetstream()
        await self.nc.subscribe(subjects.node_assign(self.node_id), cb=self._on_assign)
        await self.nc.subscribe(subjects.node_cancel(self.node_id), cb=self._on_cancel)
        await self.nc.subscribe(subjects.node_drain(self.node_id), cb=self._on_drain)
        await self.nc.flush()
        self._log.info("node_started", nats=self.settings.nats_url, engine=self.settings.engine,
                       engine_url=self.engine_location, slots=self.settings.max_concurrency)
        advertiser = asyncio.create_task(self._advertise_loop(), name="advertise")
        try:
            await self._stop.wait()
        finally:
            advertiser.cancel()
            await asyncio.gather(advertiser, return_exceptions=True)
            await self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    @property
    def engine_location(self) -> str:
        """Where the engine is, as the engine resolved it (the built-in engine: the GGUF file's path)."""
        return getattr(self.engine, "url", None) or self.settings.engine_url

    async def _connect(self) -> NATS | None:
        """Connect to NATS; the client retries forever, so wait for it or for stop(), whichever comes first."""
        connecting = asyncio.create_task(nats.connect(
            servers=[u.strip() for u in self.settings.nats_url.split(",") if u.strip()],
            name=f"infernet-node {self.node_id}", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            reconnect_to_server_handler=reconnect_backoff,
            connect_timeout=5, allow_reconnect=True,
            error_cb=self._on_nats_error, disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect,
        ), name="nats-connect")
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not connecting.done():
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
        return connecting.result() if not connecting.cancelled() else None

    async def _close_side_services(self) -> None:
        if self.status_server is not None:
            await self.status_server.stop()
            self.status_server = None
        self.gpu_probe.close()

    async def drain(self, grace_s: float | None = None) -> None:
        """Take no new jobs, let running ones finish within the grace period, then stop."""
        if self.state != "draining":
            self.state = "draining"
            self._log.info("node_draining", running=len(self.jobs))
            await self.advertise()
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except asyncio.TimeoutError:
            self._log.warning("drain_grace_expired", running=len(self.jobs), detail="stopping remaining jobs")
            for job in list(self.jobs.values()):
                self._cancel(job, "node_shutdown")
            await asyncio.wait_for(self._idle.wait(), timeout=10)
        self.stop()

    async def _shutdown(self) -> None:
        for job in list(self.jobs.values()):
            self._cancel(job, "node_shutdown")
        tasks = [j.task for j in self.jobs.values() if j.task]
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.nc is not None:
            try:
                await self.nc.drain()
            except Exception:  # connection already gone
                pass
        await self.engine.aclose()
        await self._close_side_services()
        self._log.info("node_stopped", jobs_served=self.jobs_served)

    async def _on_nats_error(self, exc: Exception) -> None:
        """NATS errors repeat every retry while it is down: log each distinct one at most every 30 s."""
        text = str(exc) or type(exc).__name__
        now = time.monotonic()
        if now - self._nats_errors_logged.get(text, -1e9) < 30:
            return
        self._nats_errors_logged[text] = now
        if self.nc is None:
            self._log.warning("nats_unreachable", nats=self.settings.nats_url, error=text,
                              action="retrying; check INFERNET_NATS_URL and that the control plane's NATS is "
                                     "reachable from here ('infernet-node doctor')")
        else:
            self._log.warning("nats_error", error=text)

    async def _on_disconnect(self) -> None:
        self._log.warning("nats_disconnected", detail="reconnecting with backoff; results are held until NATS is back")

    async def _on_reconnect(self) -> None:
        self.metrics.nats_reconnects.inc()
        self._log.info("nats_reconnected")
        asyncio.create_task(self.advertise())

    # -- advertising -----------------------------------------------------------------------------
    async def refresh_engine(self) -> None:
        """Ask the engine what it has; on failure advertise no models until it answers again."""
        try:
            health = await asyncio.wait_for(self.engine.health(), timeout=5)
            models = list(await asyncio.wait_for(self.engine.list_models(), timeout=5)) if health.ok else []
        except (EngineError, asyncio.TimeoutError) as exc:
            health, models = None, []
            detail = str(exc) or type(exc).__name__
        else:
            detail = health.detail
        ok = bool(health and health.ok)
        if ok and not self.engine_ok:
            self._log.info("engine_reachable", engine=self.settings.engine, version=health.version,
                           models=[m.name for m in models])
            self._engine_warned = False
        elif not ok and not self._engine_warned:
            self._log.warning("engine_unreachable", engine=self.settings.engine, url=self.settings.engine_url,
                              detail=detail, action="start the engine (e.g. 'ollama serve') or set OLLAMA_HOST; "
                                                     "the node advertises no models until it answers")
            self._engine_warned = True
        self.engine_ok = ok
        self.engine_version = health.version if health else None
        allow, deny = self.settings.models_allow, self.settings.models_deny
        self.models = [m for m in models if model_allowed(m.name, allow, deny)]
        self.hidden_models = [m.name for m in models if not model_allowed(m.name, allow, deny)]
        self.metrics.engine_up.set(1 if ok else 0)
        self.metrics.models.set(len(self.models))

    async def refresh_gpus(self) -> None:
        """GPU facts for the next advertisement (NVML calls run in a thread; a CPU node has none)."""
        self.gpus = await asyncio.to_thread(self.gpu_probe.snapshot)

    async def bench(self) -> None:
        """A short generation per loaded chat model, so tokens/sec is advertised before the first job."""
        for model in [m for m in self.models if m.loaded and not m.embeddings]:
            params = protocol.GenerationParams(max_tokens=32, temperature=0.0)
            completion = None
            try:
                async with asyncio.timeout(120):
                    async with aclosing(self.engine.chat(model.name, _BENCH_PROMPT, params)) as stream:
                        async for item in stream:
                            if isinstance(item, Completion):
                                completion = item
            except (EngineError, TimeoutError) as exc:
                self._log.warning("bench_failed", model=model.name, error=str(exc) or type(exc).__name__)
                continue
            tps = completion.tokens_per_second if completion else None
            self.rates.observe(model.name, tps)
            if tps is not None:
                self.metrics.tokens_per_second.labels(model=model.name).set(self.rates.get(model.name))
            self._log.info("bench_done", model=model.name, tokens_per_second=tps,
                           tokens=completion.completion_tokens if completion else None)

    def status(self) -> dict:
        """What this node advertises right now, plus its counters: served at /status for `infernet-node status`."""
        ad = self.advertisement()
        return {
            "node_id": self.node_id, "agent_version": __version__, "state": self.state,
            "engine": self.settings.engine, "engine_url": self.engine_location,
            "engine_ok": self.engine_ok, "engine_version": self.engine_version,
            "nats_url": self.settings.nats_url, "nats_connected": bool(self.nc and self.nc.is_connected),
            "slots": ad.slots, "active_jobs": ad.active_jobs, "jobs_served": self.jobs_served,
            "outcomes": dict(self.outcomes), "tokens_generated": self.tokens_generated,
            "models": [msgspec.to_builtins(m) for m in ad.models], "hidden_models": list(self.hidden_models),
            "gpus": [msgspec.to_builtins(g) for g in ad.gpus], "labels": dict(ad.labels),
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def advertisement(self) -> protocol.Advertisement:
        return protocol.Advertisement(
            node_id=self.node_id, token=self.settings.node_token or "", agent_version=__version__,
            engine=self.settings.engine, engine_version=self.engine_version, engine_ok=self.engine_ok,
            state=self.state, slots=self.settings.max_concurrency, active_jobs=len(self.jobs),
            models=tuple(
                protocol.ModelInfo(name=m.name, loaded=m.loaded, size_bytes=m.size_bytes,
                                   context_length=m.context_length, tokens_per_second=self.rates.get(m.name),
                                   embeddings=m.embeddings, capabilities=m.capabilities)
                for m in self.models
            ),
            gpus=self.gpus, labels=self.settings.advertised_labels(), boot_id=self.boot_id, running=tuple(self.unsettled),
            interval_s=self.settings.advertise_interval_s, sent_at=time.time(),
        )

    async def advertise(self) -> None:
        if self.nc is None or not self.nc.is_connected:
            return
        try:
            await self.nc.publish(subjects.advertisements(), protocol.encode(self.advertisement()))
        except Exception as exc:  # disconnected mid-publish: the next tick retries
            self._log.debug("advertise_failed", error=str(exc))

    async def _advertise_loop(self) -> None:
        while True:
            await self.advertise()
            await asyncio.sleep(self.settings.advertise_interval_s)
            await self.refresh_engine()
            await self.refresh_gpus()

    # -- assignments -----------------------------------------------------------------------------
    async def _on_assign(self, msg) -> None:
        try:
            assignment = protocol.decode(msg.data, protocol.Assignment)
        except protocol.DecodeError as exc:
            self._log.warning("malformed_assignment", error=str(exc))
            await msg.respond(protocol.encode(protocol.AssignmentReply(
                job_id="", attempt=0, accepted=False, node_id=self.node_id, reason="bad_assignment", detail=str(exc))))
            return
        reason, detail = self._refusal(assignment)
        reply = protocol.AssignmentReply(job_id=assignment.job_id, attempt=assignment.attempt,
                                         accepted=reason is None, node_id=self.node_id, reason=reason, detail=detail)
        if reason is None:
            job = RunningJob(assignment)
            self.jobs[assignment.job_id] = job
            self.unsettled.add(assignment.job_id)
            self.metrics.active_slots.set(len(self.jobs))
            self._idle.clear()
            job.task = asyncio.create_task(self._run(job), name=f"job {assignment.job_id}")
        await msg.respond(protocol.encode(reply))

    def _refusal(self, a: protocol.Assignment) -> tuple[str | None, str | None]:
        if self.state == "draining":
            return "draining", "node is draining"
        if a.job_id in self.jobs:
            return "at_capacity", "job already running here"
        if len(self.jobs) >= self.settings.max_concurrency:
            return "at_capacity", f"{len(self.jobs)}/{self.settings.max_concurrency} slots busy"
        if not self.engine_ok or all(m.name != a.model for m in self.models):
            return "model_unavailable", f"engine does not serve {a.model}"
        return None, None

    async def _on_cancel(self, msg) -> None:
        try:
            cancel = protocol.decode(msg.data, protocol.Cancel)
        except protocol.DecodeError as exc:
            self._log.warning("malformed_cancel", error=str(exc))
            return
        job = self.jobs.get(cancel.job_id)
        if job is not None and job.assignment.attempt == cancel.attempt:
            self._cancel(job, cancel.reason or "cancelled")

    async def _on_drain(self, msg) -> None:
        asyncio.create_task(self.drain())

    def _cancel(self, job: RunningJob, reason: str) -> None:
        if job.task is not None and not job.task.done() and job.cancel_reason is None:
            job.cancel_reason = reason
            job.task.cancel()

    # -- running a job ---------------------------------------------------------------------------
    async def _run(self, job: RunningJob) -> None:
        a = job.assignment
        bound = self._log.bind(job_id=a.job_id, attempt=a.attempt, model=a.model)
        started = time.monotonic()
        try:
            outcome = await self._execute(job, started)
        except asyncio.CancelledError:
            reason = job.cancel_reason or "node_shutdown"
            outcome = self._failure(job, reason, f"job stopped on node {self.node_id}: {reason}")
        except EngineError as exc:
            bound.warning("job_engine_error", error=exc.code, detail=str(exc))
            self.metrics.engine_errors.labels(code=exc.code).inc()
            outcome = self._failure(job, exc.code, f"{self.settings.engine} on node {self.node_id}: {exc}",
                                    produced=exc.produced_tokens)
        except TimeoutError:
            outcome = self._failure(job, "timeout", "the job passed its wall-clock deadline")
        except Exception as exc:
            bound.exception("job_crashed")
            outcome = self._failure(job, "internal_error", f"node agent error: {type(exc).__name__}: {exc}")
        finally:
            self.jobs.pop(a.job_id, None)
            self.metrics.active_slots.set(len(self.jobs))
            if not self.jobs:
                self._idle.set()
        self.jobs_served += 1
        kind = "completed" if isinstance(outcome, protocol.JobResult) else (
            "cancelled" if outcome.error == "cancelled" else "failed")
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        self.metrics.job_finished(kind, getattr(outcome, "error", None))
        bound.info("job_finished", outcome=type(outcome).__name__, error=getattr(outcome, "error", None),
                   chunks=job.chunks)
        try:
            await self._publish_outcome(outcome)
        finally:
            self.unsettled.discard(a.job_id)

    def _failure(self, job: RunningJob, code: str, message: str, *, produced: bool = False) -> protocol.JobFailure:
        a = job.assignment
        produced = produced or job.chunks > 0
        return protocol.JobFailure(
            job_id=a.job_id, attempt=a.attempt, lease=a.lease, node_id=self.node_id, error=code, message=message,
            partial_content="".join(job.parts), chunks=job.chunks,
            retryable=(not produced) and code in _RETRYABLE,
        )

    async def _execute(self, job: RunningJob, started: float) -> protocol.JobOutcome:
        a = job.assignment
        remaining = a.deadline - time.time() if a.deadline else None
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            if a.kind == "embed":
                vectors, prompt_tokens = await self.engine.embed(a.model, a.inputs)
                usage = protocol.Usage(prompt_tokens or 0, 0, prompt_tokens or 0)
                return protocol.JobResult(
                    job_id=a.job_id, attempt=a.attempt, lease=a.lease, node_id=self.node_id, usage=usage,
                    timings=protocol.Timings(duration_ms=(time.monotonic() - started) * 1000),
                    embeddings=protocol.EmbedOutput(tuple(tuple(v) for v in vectors)),
                )
            return await self._generate(job, started)

    async def _generate(self, job: RunningJob, started: float) -> protocol.JobResult:
        a = job.assignment
        coalesce = self.settings.coalesce_ms / 1000.0
        subject = subjects.job_tokens(a.job_id)
        pending: list[str] = []
        last_flush = 0.0
        ttft = None
        completion = Completion()
        publish = self.nc.publish
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
                await publish(subject, protocol.encode(protocol.TokenChunk(a.job_id, a.attempt, job.chunks, text)))

        def flush_later() -> None:
            # Held text goes out at most coalesce_ms after it arrived, even if the engine pauses.
            nonlocal timer
            if timer is None:
                timer = loop.call_later(coalesce, lambda: asyncio.ensure_future(flush()))

        try:
            async with aclosing(self.engine.chat(a.model, a.messages, a.params)) as stream:
                async for item in stream:
                    if isinstance(item, Delta):
                        if not item.text:
                            continue
                        job.parts.append(item.text)
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

    async def _publish_outcome(self, outcome: protocol.JobOutcome) -> None:
        """Publish to JetStream until it is stored (deduplicated by job, attempt and lease)."""
        data = protocol.encode(outcome)
        subject = subjects.job_result(outcome.job_id)
        headers = {"Nats-Msg-Id": f"{outcome.job_id}:{outcome.attempt}:{outcome.lease}"}
        delay = 0.1
        give_up = time.monotonic() + 3600
        while True:
            try:
                await self.js.publish(subject, data, headers=headers, timeout=5)
                return
            except Exception as exc:  # NATS down, JetStream electing, stream missing: keep it and retry
                if time.monotonic() > give_up:
                    self._log.error("outcome_dropped", job_id=outcome.job_id, error=str(exc),
                                    detail="could not store the result for an hour; the control plane will re-place or fail the job")
                    return
                self._log.warning("outcome_publish_retry", job_id=outcome.job_id, error=str(exc) or type(exc).__name__,
                                  retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
