"""One NATS connection per replica: JetStream streams, assignment requests, and subscriptions."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError, TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

import protocol
from control_plane.bus.link import BusLink
from control_plane.errors import InfernetError
from protocol import subjects

log = structlog.get_logger("control_plane.bus")


class BusError(InfernetError):
    """NATS is unreachable or refused an operation."""

    code = "service_unavailable"
    status = 503


def credentials(servers: list[str], user: str | None, password: str | None, tls_ca: str | None) -> dict:
    """nats.connect keywords for a control-plane identity (user/password) and TLS verified against `tls_ca`."""
    options: dict = {}
    if user:
        options.update(user=user, password=password or "")
    if tls_ca or any(s.startswith("tls://") for s in servers):
        ctx = ssl.create_default_context(cafile=tls_ca or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        options["tls"] = ctx
    return options


class NoResponders(BusError):
    """Nothing listens on the node's subject: its agent is not connected (dead, or cut off)."""


class Bus:
    """NATS for the control plane; every subject comes from protocol.subjects."""

    def __init__(self, nc: NATS, *, token_replay_secs: float = 600.0, stream_replicas: int = 1,
                 link: BusLink | None = None) -> None:
        self.nc = nc
        #: Up or lost, and since when: what streams and the sweeper act on (fed by nats-py's callbacks).
        self.link = link or BusLink()
        self.js = nc.jetstream()
        self._token_replay_secs = token_replay_secs
        self._replicas = stream_replicas
        self._subs: list = []

    @classmethod
    async def connect(cls, url: str, *, name: str, token_replay_secs: float = 600.0, stream_replicas: int = 1,
                      user: str | None = None, password: str | None = None, tls_ca: str | None = None) -> Bus:
        servers = [u.strip() for u in url.split(",") if u.strip()]

        async def on_error(exc: Exception) -> None:
            log.warning("nats_error", error=str(exc))

        holder: list = []
        restoring: set[asyncio.Task] = set()
        link = BusLink()

        async def on_disconnect() -> None:
            nc = holder[0] if holder else None
            if nc is not None and (nc.is_closed or nc.is_draining):  # our own close(): nothing to reconnect
                log.info("nats_closed")
                return
            log.warning("nats_disconnected", detail="reconnecting; assignments wait until NATS is back")
            link.lost()

        async def on_reconnect() -> None:
            log.info("nats_reconnected")
            if holder:  # not in this callback: JetStream may still be recovering, and it retries for a while
                task = asyncio.create_task(holder[1].restore_streams(), name="restore-streams")
                restoring.add(task)
                task.add_done_callback(restoring.discard)
            link.restored()

        try:
            nc = await nats.connect(
                servers=servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                connect_timeout=5, error_cb=on_error, disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect, allow_reconnect=True, **credentials(servers, user, password, tls_ca),
            )
        except Exception as exc:  # nats raises several unrelated types on connect failure
            raise BusError(f"cannot connect to NATS at {url}: {exc}") from exc
        bus = cls(nc, token_replay_secs=token_replay_secs, stream_replicas=stream_replicas, link=link)
        holder.extend((nc, bus))
        await bus.ensure_streams()
        return bus

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    @property
    def max_payload(self) -> int:
        """The largest message the NATS server takes (its `max_payload`, 1 MiB by default)."""
        return self.nc.max_payload or 1024 * 1024

    async def ensure_streams(self) -> None:
        """Create (or update) the results stream and the token replay stream."""
        await self._ensure_stream(StreamConfig(
            name=subjects.RESULTS_STREAM, subjects=[subjects.all_job_results()],
            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
            max_age=7 * 24 * 3600.0, duplicate_window=120.0, num_replicas=self._replicas,
        ))
        await self._ensure_stream(StreamConfig(
            name=subjects.TOKENS_STREAM, subjects=[subjects.all_job_tokens()],
            retention=RetentionPolicy.LIMITS, storage=StorageType.MEMORY,
            max_age=self._token_replay_secs, max_bytes=512 * 1024 * 1024,
            allow_direct=True,  # replay reads a job's chunks with one batched direct get (streaming/replay.py)
            num_replicas=self._replicas,
        ))

    async def restore_streams(self) -> None:
        """After a reconnect: a restarted nats-server keeps file streams but not the memory token stream (nor,
        when its store was lost, any stream), so both are made sure of again; failures are logged, not raised
        (the recorder's own check retries the results stream)."""
        try:
            await self.ensure_streams()
        except Exception as exc:
            log.error("jetstream_streams_not_restored", error=str(exc) or type(exc).__name__,
                      detail="token replay (late join, Last-Event-ID) is unavailable until the stream exists",
                      action="check JetStream on the NATS server")

    async def _ensure_stream(self, config: StreamConfig) -> None:
        for attempt in range(20):
            try:
                try:
                    await self.js.stream_info(config.name)
                    await self.js.update_stream(config)
                except NotFoundError:
                    await self.js.add_stream(config)
                await self._wait_for_leader(config.name)
                return
            except Exception as exc:  # JetStream may still be electing a leader after a (re)start
                if attempt == 19:
                    raise BusError(f"cannot create JetStream stream {config.name}: {exc}") from exc
                await asyncio.sleep(0.25 * (attempt + 1))

    async def _wait_for_leader(self, name: str) -> None:
        """A replicated stream takes no publish until its raft group has elected a leader (NoStreamResponse)."""
        for _ in range(100):
            info = await self.js.stream_info(name)
            if info.cluster is None or info.cluster.leader:
                return
            await asyncio.sleep(0.1)
        raise BusError(f"JetStream stream {name} has no leader yet")

    async def assign(self, node_id: str, assignment: protocol.Assignment, timeout: float) -> protocol.AssignmentReply | None:
        """Offer a job to a node; None when it did not answer in time; NoResponders when nothing listens there."""
        try:
            msg = await self.nc.request(subjects.node_assign(node_id), protocol.encode(assignment), timeout=timeout)
        except NoRespondersError as exc:
            raise NoResponders(f"node {node_id} is not connected to NATS") from exc
        except (NatsTimeout, asyncio.TimeoutError):
            return None
        except ConnectionClosedError as exc:
            raise BusError("NATS connection closed") from exc
        try:
            return protocol.decode(msg.data, protocol.AssignmentReply)
        except protocol.DecodeError as exc:
            log.warning("malformed_assignment_reply", node_id=node_id, job_id=assignment.job_id, error=str(exc))
            return None

    async def publish(self, subject: str, message: object) -> None:
        await self.nc.publish(subject, protocol.encode(message))

    async def subscribe(self, subject: str, handler: Callable[[Msg], Awaitable[None]], *, queue: str = ""):
        sub = await self.nc.subscribe(subject, queue=queue, cb=handler)
        self._subs.append(sub)
        return sub

    async def results_subscription(self, cb: Callable[[Msg], Awaitable[None]]):
        """Push-subscribe to the durable consumer all replicas share for job outcomes (a deliver group:
        each outcome goes to one replica; unacked ones are redelivered after ack_wait)."""
        config = ConsumerConfig(
            durable_name=subjects.RESULTS_CONSUMER, deliver_group=subjects.RESULTS_CONSUMER,
            ack_wait=30.0, max_ack_pending=20_000,
        )
        return await self.js.subscribe(
            subjects.all_job_results(), queue=subjects.RESULTS_CONSUMER, durable=subjects.RESULTS_CONSUMER,
            stream=subjects.RESULTS_STREAM, config=config, cb=cb, manual_ack=True,
        )

    async def results_consumer_exists(self) -> bool:
        try:
            await self.js.consumer_info(subjects.RESULTS_STREAM, subjects.RESULTS_CONSUMER)
            return True
        except NotFoundError:
            return False

    async def outcome_waiting(self, node_id: str, job_id: str, attempt: int, lease: str | None) -> bool:
        """The node stored an outcome of that attempt that no replica has recorded yet (the results stream keeps a
        message until it is acked), or JetStream did not answer (so it may have): the attempt ended, it is not
        lost. False only when the stream says it holds no such outcome."""
        try:
            stored = await self.js.get_last_msg(subjects.RESULTS_STREAM, subjects.node_job_result(node_id, job_id))
        except NotFoundError:
            return False
        except Exception as exc:  # JetStream electing or down: ask again at the next check
            log.debug("stored_outcome_unknown", job_id=job_id, error=str(exc) or type(exc).__name__)
            return True
        try:
            outcome = protocol.decode(stored.data or b"", protocol.JobOutcome)
        except protocol.DecodeError:
            return False
        return outcome.attempt == attempt and (lease is None or outcome.lease == lease)

    async def flush(self) -> None:
        await self.nc.flush()

    async def close(self) -> None:
        """Flush what was published and close; unacked outcomes are redelivered to another replica."""
        try:
            await self.nc.flush(timeout=2)
        except Exception:  # disconnected: nothing more can be flushed
            pass
        try:
            await self.nc.close()
        except Exception as exc:  # the socket died mid-reconnect: the client is closed all the same
            log.debug("nats_close_error", error=str(exc) or type(exc).__name__)
