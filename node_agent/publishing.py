"""What the node publishes: token chunks (core NATS), outcomes (JetStream, until stored), advertisements."""

from __future__ import annotations

import asyncio
import time

import structlog

import protocol
from protocol import subjects

log = structlog.get_logger("node_agent")

#: How long an outcome is retried before it is given up (the control plane then re-places or fails the job).
OUTCOME_GIVE_UP_S = 3600.0


class Publisher:
    """Publishes on the agent's NATS connection; set `nc` (and `js`) once connected."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.nc = None
        self.js = None
        self._log = log.bind(node_id=node_id)

    def attach(self, nc) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def chunk(self, chunk: protocol.TokenChunk) -> None:
        await self.nc.publish(subjects.node_job_tokens(self.node_id, chunk.job_id), protocol.encode(chunk))

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
                if time.monotonic() > give_up:
                    self._log.error("outcome_dropped", job_id=outcome.job_id, error=str(exc),
                                    detail="could not store the result for an hour; the control plane will "
                                           "re-place or fail the job")
                    return False
                self._log.warning("outcome_publish_retry", job_id=outcome.job_id,
                                  error=str(exc) or type(exc).__name__, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
