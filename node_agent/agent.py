"""The node agent's lifecycle: connect, subscribe, advertise on a timer, drain and shut down.

The parts: slots.py (the slot table), assignments.py (assign/cancel handling and job tasks), runner.py
(one job on the engine), publishing.py (chunks, outcomes, advertisements).
"""

from __future__ import annotations

import asyncio
import fnmatch
import random
import secrets
import time
from contextlib import aclosing

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS

import protocol
from node_agent import __version__
from node_agent.assignments import Assignments
from node_agent.engines.base import Completion, Engine, EngineError, EngineModel
from node_agent.gpu import GpuProbe
from node_agent.metrics import NodeMetrics
from node_agent.bus import connect_options, servers as bus_servers
from node_agent.publishing import Publisher
from node_agent.rates import RollingRates
from node_agent.runner import JobRunner
from node_agent.settings import NodeSettings
from node_agent.slots import RunningJob, SlotTable
from node_agent.status_http import StatusServer
from node_agent.tasks import cancel_and_wait
from protocol import subjects

log = structlog.get_logger("node_agent")

#: The short generation `bench_on_start` runs per loaded model.
_BENCH_PROMPT = (protocol.ChatMessage(role="user", content="Describe the sea in two sentences."),)


def model_allowed(name: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> bool:
    """Denied if any deny glob matches; else allowed when the allow list is empty or any allow glob matches."""
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in deny):
        return False
    return not allow or any(fnmatch.fnmatchcase(name, pattern) for pattern in allow)


__all__ = ["NodeAgent", "RunningJob", "model_allowed", "reconnect_backoff"]

#: Nodes answer a control plane's request to advertise within this many seconds (spread so 10,000 do not at once).
ADVERTISEMENT_REQUEST_JITTER_S = 0.25
#: On stop, how long jobs' outcomes may take to be stored on JetStream before they are abandoned (the control
#: plane then re-places or fails those jobs); a drain has already waited for the jobs themselves.
OUTCOME_FLUSH_S = 30.0
#: On stop, how long draining the NATS connection (unsubscribe, flush) may take before it is closed outright.
NATS_CLOSE_S = 10.0
#: A drain past its grace stops the running jobs, then waits this long for them to end before stopping anyway.
JOB_STOP_S = 10.0


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
        self.engine_ok = False
        self.engine_version: str | None = None
        self.nc: NATS | None = None
        self.slots = SlotTable(settings.max_concurrency, on_change=self.metrics.active_slots.set)
        self.publisher = Publisher(node_id)
        self.runner = JobRunner(engine, node_id=node_id, engine_name=settings.engine,
                                coalesce_ms=settings.coalesce_ms, rates=self.rates, metrics=self.metrics,
                                publish_chunk=self.publisher.chunk)
        self.assignments = Assignments(node_id, self.slots, self.runner, self.publisher, self.metrics,
                                       draining=lambda: self.state == "draining", serves=self.serves)
        self._stop = asyncio.Event()
        self._answers: set[asyncio.Task] = set()
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
        self.publisher.attach(self.nc)
        await self.publisher.start_chunk_acks()
        await self.nc.subscribe(subjects.node_assign(self.node_id), cb=self.assignments.on_assign)
        await self.nc.subscribe(subjects.node_cancel(self.node_id), cb=self.assignments.on_cancel)
        await self.nc.subscribe(subjects.node_drain(self.node_id), cb=self._on_drain)
        await self.nc.subscribe(subjects.advertisement_requests(), cb=self._on_advertisement_request)
        await self.nc.flush()
        self._log.info("node_started", nats=",".join(bus_servers(self.settings.nats_url)), engine=self.settings.engine,
                       engine_url=self.engine_location, slots=self.settings.max_concurrency)
        advertiser = asyncio.create_task(self._advertise_loop(), name="advertise")
        try:
            await self._stop.wait()
        finally:
            await cancel_and_wait(advertiser)
            await self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    @property
    def jobs(self) -> dict[str, RunningJob]:
        """The jobs holding a slot right now, by id."""
        return self.slots.running

    @property
    def unsettled(self) -> set[str]:
        """Jobs accepted whose outcome is not yet stored on JetStream (advertised as `running`)."""
        return self.slots.unsettled

    @property
    def jobs_served(self) -> int:
        return self.assignments.jobs_served

    @property
    def outcomes(self) -> dict[str, int]:
        return self.assignments.outcomes

    @property
    def tokens_generated(self) -> int:
        return self.runner.tokens_generated

    def serves(self, model: str) -> bool:
        """The engine answers and advertises this model (after the allow/deny lists)."""
        return self.engine_ok and any(m.name == model for m in self.models)

    @property
    def engine_location(self) -> str:
        """Where the engine is, as the engine resolved it (the built-in engine: the GGUF file's path)."""
        return getattr(self.engine, "url", None) or self.settings.engine_url

    async def _connect(self) -> NATS | None:
        """Connect to NATS; the client retries forever, so wait for it or for stop(), whichever comes first."""
        connecting = asyncio.create_task(nats.connect(
            **connect_options(self.settings, self.node_id), max_reconnect_attempts=-1, reconnect_time_wait=0.5,
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
                await cancel_and_wait(connecting)
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
            await asyncio.wait_for(self.slots.idle.wait(), timeout=grace)
        except asyncio.TimeoutError:
            self._log.warning("drain_grace_expired", running=len(self.jobs), detail="stopping remaining jobs")
            self.slots.stop_all("node_shutdown")
            try:
                await asyncio.wait_for(self.slots.idle.wait(), timeout=JOB_STOP_S)
            except asyncio.TimeoutError:  # a job that ignores its stop must not keep the node up: stop says which
                self._log.warning("jobs_not_stopping", jobs=sorted(self.jobs), detail="stopping the node anyway")
        finally:
            self.stop()  # whatever happened above, a drain ends in a stop

    async def _on_drain(self, msg) -> None:
        """Only a Drain for this node drains it. Permissions let only control planes publish here, but a node can
        make the server publish anything it stores in a stream to a reply subject of its choice (JetStream's
        acknowledgement), so the message itself must be a drain, not merely arrive on this subject."""
        try:
            drain = protocol.decode(msg.data, protocol.Drain)
        except protocol.DecodeError as exc:
            self._log.warning("malformed_drain", error=str(exc), detail="ignored: the node keeps serving")
            return
        if drain.node_id != self.node_id:
            self._log.warning("drain_for_another_node", drain_node_id=drain.node_id, detail="ignored")
            return
        asyncio.create_task(self.drain())

    async def _on_advertisement_request(self, msg) -> None:
        """A control plane started and asks every node to advertise now; a short random delay spreads the answers.
        Anything else on the subject (a reflected JetStream acknowledgement, see _on_drain) is not an ask."""
        try:
            protocol.decode(msg.data, protocol.AdvertisementRequest)
        except protocol.DecodeError:
            return

        async def answer() -> None:
            await asyncio.sleep(random.uniform(0, ADVERTISEMENT_REQUEST_JITTER_S))
            await self.advertise()
        task = asyncio.create_task(answer())
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _shutdown(self) -> None:
        self._log.info("node_stopping", running=len(self.jobs), storing_outcomes=self.assignments.pending)
        self.slots.stop_all("node_shutdown")
        unstored = await self.assignments.wait_all(timeout=OUTCOME_FLUSH_S)
        if unstored:
            self._log.warning("outcomes_not_stored", jobs=unstored,
                              detail=f"NATS did not store them within {OUTCOME_FLUSH_S:.0f} s of stopping; the control "
                                     "plane re-places or fails those jobs")
        await self.publisher.close()
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.drain(), timeout=NATS_CLOSE_S)
            except Exception:  # reconnecting, already closed, or too slow: close outright, no reconnect after stop
                try:
                    await self.nc.close()
                except Exception as exc:  # the socket was already gone; the client is closed all the same
                    self._log.debug("nats_close_error", error=str(exc) or type(exc).__name__)
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
        if "authorization" in text.lower() or "authentication" in text.lower():
            self._log.error("nats_auth_refused", nats=",".join(bus_servers(self.settings.nats_url)), error=text,
                            action="the bus refused this node's token: it is unknown, revoked, or no control plane "
                                   "is answering authentication; run 'infernet-node doctor'")
        elif self.nc is None:
            self._log.warning("nats_unreachable", nats=",".join(bus_servers(self.settings.nats_url)), error=text,
                              action="retrying; check INFERNET_NATS_URL and that the control plane's NATS is "
                                     "reachable from here ('infernet-node doctor')")
        else:
            self._log.warning("nats_error", error=text)

    async def _on_disconnect(self) -> None:
        if self.nc is not None and (self.nc.is_closed or self.nc.is_draining):  # our own stop: no reconnect
            self._log.info("nats_closed")
            return
        self._log.warning("nats_disconnected", detail="reconnecting with backoff; results are held until NATS is back")

    async def _on_reconnect(self) -> None:
        self.metrics.nats_reconnects.inc()
        self._log.info("nats_reconnected")
        asyncio.create_task(self.advertise())

    # -- advertising -----------------------------------------------------------------------------
    async def refresh_engine(self) -> None:
        """Ask the engine what it has; on failure advertise no models until it answers again."""
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation (see tasks.py)
            async with asyncio.timeout(5):
                health = await self.engine.health()
            async with asyncio.timeout(5):
                models = list(await self.engine.list_models()) if health.ok else []
        except (EngineError, TimeoutError) as exc:
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
            node_id=self.node_id, agent_version=__version__,
            engine=self.settings.engine, engine_version=self.engine_version, engine_ok=self.engine_ok,
            state=self.state, slots=self.settings.max_concurrency, active_jobs=len(self.slots),
            models=tuple(
                protocol.ModelInfo(name=m.name, loaded=m.loaded, size_bytes=m.size_bytes,
                                   context_length=m.context_length, tokens_per_second=self.rates.get(m.name),
                                   embeddings=m.embeddings, capabilities=m.capabilities)
                for m in self.models
            ),
            gpus=self.gpus, labels=self.settings.advertised_labels(), boot_id=self.boot_id, running=tuple(self.unsettled),
            admitted=self.slots.admitted,
            interval_s=self.settings.advertise_interval_s, sent_at=time.time(),
        )

    async def advertise(self) -> None:
        await self.publisher.advertisement(self.advertisement())

    async def _advertise_loop(self) -> None:
        while True:
            await self.advertise()
            await asyncio.sleep(self.settings.advertise_interval_s)
            await self.refresh_engine()
            await self.refresh_gpus()
