"""Builds and runs one replica's moving parts: store, bus, registry, dispatcher, recorder, sweeper."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from control_plane.accounts.auth import Authenticator
from control_plane.accounts.events import KeyEvents
from control_plane.bus import Bus
from control_plane.credits.ledger import LedgerRollup
from control_plane.idempotency.service import Idempotency
from control_plane.retention.service import Retention
from control_plane.health.metrics_listener import scrape, serve_metrics
from control_plane.jobs.dispatcher import Dispatcher
from control_plane.lib.metrics import ControlPlaneMetrics
from control_plane.jobs.gateway import SubmitGateway
from control_plane.jobs.recorder import OutcomeRecorder
from control_plane.jobs.service import JobService
from control_plane.jobs.sweeper import Sweeper
from control_plane.nodes.directory import NodeDirectory
from control_plane.bus.system import SystemBus
from control_plane.nodes.bus_auth import NodeBusAuth
from control_plane.nodes.heartbeats import HeartbeatHandler
from control_plane.nodes.presence import NodePresence
from control_plane.nodes.service import NodeRegistrations
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database
from control_plane.store.migrate import apply_migrations
from control_plane.trust.service import TrustService
from control_plane.trust.tokenizers import GgufTokenizers
from control_plane.openai.service import OpenAIService
from control_plane.streaming import TokenRelay
from control_plane.webhooks.worker import WebhookWorker

log = structlog.get_logger("control_plane.runtime")


@dataclass
class Runtime:
    """Everything a request handler may need, created once per process."""

    settings: Settings
    db: Database
    bus: Bus
    registry: NodeRegistry
    dispatcher: Dispatcher
    recorder: OutcomeRecorder
    sweeper: Sweeper
    heartbeats: HeartbeatHandler
    auth: Authenticator
    jobs: JobService
    tasks: list[asyncio.Task] = field(default_factory=list)
    #: Token chunks and outcomes to the streams and waiting requests of this replica.
    relay: TokenRelay | None = None
    #: The OpenAI-compatible /v1 API over jobs and the relay.
    openai: OpenAIService | None = None
    #: Revocations and key changes, applied here and broadcast to every replica (issue 5).
    key_events: KeyEvents | None = None
    #: Gateway behaviours (issue 6): routing, rate limits and fallback of submissions; idempotency; webhooks.
    gateway: SubmitGateway | None = None
    idempotency: Idempotency | None = None
    webhooks: WebhookWorker | None = None
    #: Pages of the nodes list (API and console).
    directory: NodeDirectory | None = None
    #: Node standing: checked usage, measured speed, reputation, quarantine (control_plane/trust).
    trust: TrustService | None = None
    #: Registrations of nodes (name, slot limit, revocation), cached.
    registrations: NodeRegistrations | None = None
    #: The system-account connection (node connect/disconnect events, disconnecting revoked nodes); None when
    #: no system identity is configured.
    system: SystemBus | None = None
    presence: NodePresence | None = None
    #: The control plane's own token counts for the models it has a tokenizer for (usage bounds).
    tokenizers: GgufTokenizers | None = None

    @classmethod
    async def start(cls, settings: Settings, *, migrate: bool = True) -> Runtime:
        if not settings.database_url:
            raise SystemExit("INFERNET_DATABASE_URL is not set: point it at PostgreSQL (or use 'infernet-control-plane dev')")
        try:
            tokenizers = GgufTokenizers(settings.tokenizers)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        await tokenizers.start()  # reads only the vocabularies, in a worker thread: tens of milliseconds each
        if migrate:
            applied = await asyncio.to_thread(apply_migrations, settings.database_url)
            if applied:
                log.info("migrations_applied", migrations=applied)
        db = await Database.open(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
        try:
            bus = await Bus.connect(settings.nats_url, name=f"infernet-control-plane {settings.replica_id}",
                                    token_replay_secs=settings.token_replay_secs,
                                    stream_replicas=settings.stream_replicas, user=settings.nats_user,
                                    password=settings.nats_password, tls_ca=settings.nats_tls_ca)
        except Exception:
            await db.close()
            raise
        if settings.nats_auth_seed:  # nodes can connect only once some replica answers the auth callout
            await NodeBusAuth(db, bus, issuer_seed=settings.nats_auth_seed, account=settings.nats_account).start()
        system = None
        if settings.nats_system_user:
            try:
                system = await SystemBus.connect(
                    settings.nats_url, name=f"infernet-control-plane {settings.replica_id} (system)",
                    user=settings.nats_system_user, password=settings.nats_system_password,
                    account=settings.nats_account, tls_ca=settings.nats_tls_ca)
            except Exception:
                await bus.close()
                await db.close()
                raise
        registry = NodeRegistry()
        trust = TrustService(db, registry, settings)
        try:
            await trust.start()
        except Exception:
            await bus.close()
            await db.close()
            raise
        dispatcher = Dispatcher(db, bus, registry, settings, metrics=ControlPlaneMetrics(), trust=trust)
        sweeper = Sweeper(db, registry, dispatcher, settings, link=bus.link, outcome_waiting=bus.outcome_waiting)
        tokens = tokenizers if tokenizers.configured else None
        recorder = OutcomeRecorder(db, bus, registry, dispatcher, settings, trust=trust, tokens=tokens)
        registrations = NodeRegistrations(db)
        heartbeats = HeartbeatHandler(db, bus, registry, registrations, dispatcher, sweeper,
                                      results_ready=lambda: recorder.ready, claims=trust.claims)
        sweeper.reports = heartbeats.reports
        presence = None
        if system is not None:
            presence = NodePresence(registry, sweeper, heartbeats.reports, grace_s=settings.node_disconnect_grace_s)
            await system.client_events(presence.on_event)
        rt = cls(settings=settings, db=db, bus=bus, registry=registry, dispatcher=dispatcher, recorder=recorder,
                 sweeper=sweeper, heartbeats=heartbeats, auth=Authenticator(db, cache_secs=settings.auth_cache_secs),
                 jobs=JobService(db, registry, dispatcher, sweeper, settings, tokens=tokens),
                 directory=NodeDirectory(db, registry, trust=trust), trust=trust, registrations=registrations,
                 system=system, presence=presence, tokenizers=tokenizers)
        await heartbeats.start()
        rt.key_events = KeyEvents(bus, rt.auth, replica_id=settings.replica_id)
        await rt.key_events.start()
        rt.relay = TokenRelay(db, bus, recorder, dispatcher, settings)
        await rt.relay.start()
        rt.openai = OpenAIService(rt.jobs, rt.relay, registry, settings=settings)  # idempotency attached below
        rt.gateway = SubmitGateway.build(db, registry, dispatcher, sweeper, settings)
        rt.jobs.gateway, dispatcher.fallback = rt.gateway, rt.gateway.fallback
        rt.idempotency, rt.webhooks = Idempotency(db, settings), WebhookWorker(db, settings)
        rt.openai.idempotency = rt.idempotency
        await bus.flush()
        for name, coro in (("dispatcher", dispatcher.run()), ("recorder", recorder.run()),
                           ("sweeper", sweeper.run()), ("node-persist", heartbeats.persist_loop()),
                           ("credits-rollup", LedgerRollup(db, settings).run()),
                           ("gateway-upkeep", rt.gateway.run()), ("idempotency-upkeep", rt.idempotency.run()),
                           ("webhooks", rt.webhooks.run()), ("retention", Retention(db, settings).run()),
                           ("trust-sync", trust.run()), ("trust-probes", trust.verifier.probe_loop())):
            rt.tasks.append(asyncio.create_task(coro, name=name))
        try:  # the results subscription is up before the first request is served (or its failure logged)
            await asyncio.wait_for(recorder.checked.wait(), timeout=10)
        except TimeoutError:
            pass
        if settings.metrics_port:
            rt.tasks.append(asyncio.create_task(serve_metrics(
                lambda: scrape(dispatcher, registry), settings.metrics_host, settings.metrics_port), name="metrics"))
        log.info("control_plane_started", replica_id=settings.replica_id, nats=settings.nats_url)
        return rt

    def registry_clock(self) -> float:
        """The monotonic clock the registry stamps `last_seen` with."""
        import time

        return time.monotonic()

    async def stop(self) -> None:
        # Cancelled again every second until all have ended: a cancellation can be lost (Python 3.11's wait_for,
        # a library catching it), and a loop that lost it runs on; one cancel and an unbounded wait never return.
        while pending := [task for task in self.tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
        await asyncio.gather(*self.tasks, return_exceptions=True)  # (all ended) retrieves their outcomes
        if self.relay is not None:
            await self.relay.stop()
        await self.dispatcher.close()
        await self.heartbeats.flush()
        if self.trust is not None:
            await self.trust.verifier.close()
            try:
                await self.trust.flush()
            except Exception as exc:  # StoreError: the evidence of the last second is lost, nothing else
                log.warning("trust_flush_failed", error=str(exc))
        if self.presence is not None:
            await self.presence.stop()
        if self.system is not None:
            await self.system.close()
        await self.bus.close()
        await self.db.close()
        if self.tokenizers is not None:
            self.tokenizers.close()
        log.info("control_plane_stopped", replica_id=self.settings.replica_id)
