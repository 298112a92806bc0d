"""What the node publishes: token chunks (core NATS, re-sent until the token stream stored them), outcomes
(JetStream, until stored), advertisements."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import OrderedDict

import msgspec
import structlog

import protocol
from node_agent.tasks import cancel_and_wait
from protocol import subjects

log = structlog.get_logger("node_agent")

#: How long an outcome is retried before it is given up (the control plane then re-places or fails the job).
OUTCOME_GIVE_UP_S = 3600.0
#: Token chunks sent but not yet acknowledged by the token stream (INFERNET_TOKENS), kept to be sent again; past
#: this many the oldest is given up (live streams had it; only a later replay could miss it).
MAX_UNACKED_CHUNKS = 4096
#: Seconds without the stream's acknowledgement before a chunk is sent again (same Nats-Msg-Id: stored once).
CHUNK_RESEND_S = 1.0
#: How long a chunk is re-sent; within the stream's 120 s duplicate window, so a chunk stored after all (its
#: acknowledgement lost) is not stored twice.
CHUNK_GIVE_UP_S = 90.0


class Publisher:
    """Publishes on the agent's NATS connection; set `nc` (and `js`) once connected."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.nc = None
        self.js = None
        self._log = log.bind(node_id=node_id)
        #: reply token -> (subject, data, Nats-Msg-Id, first sent, last sent) of chunks the stream has not acked.
        self._unacked: OrderedDict[str, tuple[str, bytes, str, float, float]] = OrderedDict()
        self._tokens = itertools.count(1)
        self._ack_prefix: str | None = None
        self._resender: asyncio.Task | None = None
        #: Chunks given up unacknowledged (bounded buffer full, or retried CHUNK_GIVE_UP_S), and chunks sent again.
        self.chunks_given_up = 0
        self.chunks_resent = 0

    def attach(self, nc) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def start_chunk_acks(self) -> None:
        """Ask the token stream to acknowledge each chunk on this node's own inbox (no JetStream API needed):
        chunks it did not store, e.g. while its leader is being elected, are sent again. No round trip is
        awaited per chunk."""
        # Unguessable: any node can make the server send a real acknowledgement to a subject of its choice (the
        # reply of a message it stores), so a guessable ack subject would let it cancel this node's resends.
        self._ack_prefix = f"{subjects.node_inbox_prefix(self.node_id)}.chunks.{secrets.token_hex(12)}"
        await self.nc.subscribe(f"{self._ack_prefix}.*", cb=self._on_chunk_ack)
        self._resender = asyncio.create_task(self._resend_loop(), name="chunk-resend")

    @property
    def unacked_chunks(self) -> int:
        """Chunks sent that the token stream has not acknowledged yet."""
        return len(self._unacked)

    async def close(self) -> None:
        if self._resender is not None:
            await cancel_and_wait(self._resender)

    async def chunk(self, chunk: protocol.TokenChunk) -> None:
        subject, data = subjects.node_job_tokens(self.node_id, chunk.job_id), protocol.encode(chunk)
        if self._ack_prefix is None:
            await self.nc.publish(subject, data)
            return
        token = str(next(self._tokens))
        msg_id = f"{chunk.job_id}:{chunk.attempt}:{chunk.lease}:{chunk.seq}"
        now = time.monotonic()
        self._unacked[token] = (subject, data, msg_id, now, now)
        if len(self._unacked) > MAX_UNACKED_CHUNKS:
            self._unacked.popitem(last=False)
            self._given_up()
        await self.nc.publish(subject, data, reply=f"{self._ack_prefix}.{token}", headers={"Nats-Msg-Id": msg_id})

    async def _on_chunk_ack(self, msg) -> None:
        try:
            ack = msgspec.json.decode(msg.data) if msg.data else None
        except msgspec.DecodeError:
            return
        if isinstance(ack, dict) and "stream" in ack and "error" not in ack:  # stored (or a duplicate of one)
            self._unacked.pop(msg.subject.rpartition(".")[2], None)

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(CHUNK_RESEND_S / 2)
            if not self._unacked or self.nc is None or not self.nc.is_connected:
                continue
            now = time.monotonic()
            for token, (subject, data, msg_id, first, last) in list(self._unacked.items()):
                if now - first > CHUNK_GIVE_UP_S:
                    self._unacked.pop(token, None)
                    self._given_up()
                elif now - last >= CHUNK_RESEND_S and token in self._unacked:
                    self._unacked[token] = (subject, data, msg_id, first, now)
                    self.chunks_resent += 1
                    try:
                        await self.nc.publish(subject, data, reply=f"{self._ack_prefix}.{token}",
                                              headers={"Nats-Msg-Id": msg_id})
                    except Exception as exc:  # disconnected meanwhile: the next round tries again
                        self._log.debug("chunk_resend_failed", error=str(exc))
                        break

    def _given_up(self) -> None:
        self.chunks_given_up += 1
        if self.chunks_given_up in (1, 10, 100) or self.chunks_given_up % 1000 == 0:
            self._log.warning("token_chunks_not_stored", given_up=self.chunks_given_up,
                              detail="the token stream did not acknowledge them; live streams had them, a replay "
                                     "of those jobs falls back to the recorded text")

    async def advertisement(self, ad: protocol.Advertisement) -> None:
        """Best effort: a node that is disconnected (or disconnects mid-publish) advertises at the next tick."""
        if self.nc is None or not self.nc.is_connected:
            return
        try:
            await self.nc.publish(subjects.node_advertise(self.node_id), protocol.encode(ad))
        except Exception as exc:
            self._log.debug("advertise_failed", error=str(exc))

    async def outcome(self, outcome: protocol.JobOutcome) -> bool:
        """Publish to JetStream until it is stored (deduplicated by job, attempt and lease); False if given up."""
        data = protocol.encode(outcome)
        subject = subjects.node_job_result(self.node_id, outcome.job_id)
        headers = {"Nats-Msg-Id": f"{outcome.job_id}:{outcome.attempt}:{outcome.lease}"}
        delay = 0.1
        give_up = time.monotonic() + OUTCOME_GIVE_UP_S
        while True:
            try:
                await self.js.publish(subject, data, headers=headers, timeout=5)
                return True
            except Exception as exc:  # NATS down, JetStream electing, stream missing: keep it and retry
                if self.nc.is_closed:  # closed for good (the agent is stopping): no retry can ever succeed
                    self._log.error("outcome_dropped", job_id=outcome.job_id, error=str(exc) or type(exc).__name__,
                                    detail="the NATS connection is closed; the control plane will re-place or fail "
                                           "the job")
                    return False
                if time.monotonic() > give_up:
                    self._log.error("outcome_dropped", job_id=outcome.job_id, error=str(exc),
                                    detail="could not store the result for an hour; the control plane will "
                                           "re-place or fail the job")
                    return False
                self._log.warning("outcome_publish_retry", job_id=outcome.job_id,
                                  error=str(exc) or type(exc).__name__, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
