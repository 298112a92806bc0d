"""The token relay: one wildcard subscription each for token chunks and outcomes, dispatched to per-job watches.

The outcome subscription is the replica's only core one: it also frees the attempt's slot (OutcomeRecorder.seen).

Whoever streams a job (or waits for it) registers a JobWatch before the job can be assigned; the relay's
subscriptions are always open, so nothing published after that is missed, and what was published before is
replayed from the INFERNET_TOKENS JetStream stream (`stored_chunks`). Jobs that end without an outcome message
(node lost, deadline, cancel on another replica) are found by a periodic check of idle watches.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import structlog

import protocol
from control_plane.bus import Bus
from control_plane.errors import RateLimited
from control_plane.jobs.dispatcher import Dispatcher
from control_plane.jobs.recorder import OutcomeRecorder
from control_plane.settings import Settings
from control_plane.store import Database, StoreError
from control_plane.streaming.replay import ReplayError, stored_chunks
from protocol import subjects

log = structlog.get_logger("control_plane.streaming")

ENDED = ("completed", "failed", "cancelled")
#: How long `settle` polls a row that an outcome should have ended before handing back to the caller.
SETTLE_GIVE_UP_S = 2.0


def _retrieved(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # its awaiter (if any) re-raises it; unawaited, it is not "never retrieved"


class JobWatch:
    """What the relay has seen of one job for one open stream or waiting request."""

    __slots__ = ("job_id", "tokens", "chunks", "lagged", "rewind", "broken", "outcome", "ended", "wake", "waiter",
                 "seen_at")

    def __init__(self, job_id: str, tokens: bool, waiter: asyncio.Future | None, now: float) -> None:
        self.job_id = job_id
        #: False for requests that only wait for the outcome (non-streamed completions, embeddings).
        self.tokens = tokens
        #: Live chunks not yet taken by the stream, bounded by settings.stream_buffer_chunks.
        self.chunks: deque[protocol.TokenChunk] = deque()
        #: Live chunks were dropped because the buffer was full: the stream must replay from JetStream.
        self.lagged = False
        #: NATS came back after a loss: what was published meanwhile reached no subscription, so the stream reads
        #: the job's chunks from JetStream again from the start (a restarted server numbers its stream afresh).
        self.rewind = False
        #: This replica's NATS connection stayed lost past settings.stream_bus_grace_s: no live token can arrive,
        #: so the stream ends with an `error` event (the job keeps running on its node).
        self.broken = False
        #: The outcome message with the highest attempt seen (recorded or about to be).
        self.outcome: protocol.JobOutcome | None = None
        #: The periodic check found the job's row ended (no outcome message needed).
        self.ended = False
        self.wake = asyncio.Event()
        #: The recorder's future for the final row when this replica records it.
        self.waiter = waiter
        if waiter is not None:
            waiter.add_done_callback(lambda _: self.wake.set())
        self.seen_at = now

    @property
    def ending(self) -> bool:
        """Something says the job ended: its outcome arrived, this replica recorded it, or the check found it."""
        return self.ended or self.outcome is not None or (self.waiter is not None and self.waiter.done())


class Slot:
    """One open stream counted against its account; `release` is idempotent."""

    __slots__ = ("_relay", "_account_id")

    def __init__(self, relay: TokenRelay, account_id: str) -> None:
        self._relay = relay
        self._account_id = account_id

    def release(self) -> None:
        if self._account_id is not None:
            self._relay._release(self._account_id)
            self._account_id = None


class TokenRelay:
    """Per-replica fan-out of token chunks and outcomes to the streams and waiters that asked for them."""

    def __init__(self, db: Database, bus: Bus, recorder: OutcomeRecorder, dispatcher: Dispatcher, settings: Settings,
                 *, clock=time.monotonic) -> None:
        self._db = db
        self._bus = bus
        self._recorder = recorder
        self._dispatcher = dispatcher  # what this replica placed where (the first token's check), and cancels
        self._settings = settings
        self._clock = clock
        self._watches: dict[str, list[JobWatch]] = {}
        self._open: dict[str, int] = {}
        self._background: set[asyncio.Task] = set()
        self._checker: asyncio.Task | None = None
        #: True while the bus has been lost for longer than stream_bus_grace_s (new streams start broken too).
        self.bus_gone = False
        self._give_up: asyncio.TimerHandle | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._bus.subscribe(subjects.all_job_tokens(), self._on_token)
        await self._bus.subscribe(subjects.all_job_results(), self._on_outcome)
        self._checker = asyncio.create_task(self._check_loop(), name="stream-check")
        self._bus.link.listen(self._on_link)

    async def stop(self) -> None:
        if self._give_up is not None:
            self._give_up.cancel()
        tasks = [t for t in (self._checker, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run work that must outlive a cancelled request (e.g. cancelling a job whose client left); whoever
        awaits the task gets its result or exception, and nobody needs to."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(_retrieved)
        task.add_done_callback(self._background.discard)
        return task

    # -- watches -------------------------------------------------------------------------------------
    def watch(self, job_id: str, *, tokens: bool = True) -> JobWatch:
        """Start collecting what arrives for the job; call before the job can be assigned, then `unwatch`."""
        w = JobWatch(job_id, tokens, self._recorder.waiter(job_id), self._clock())
        w.broken = tokens and self.bus_gone
        self._watches.setdefault(job_id, []).append(w)
        return w

    def unwatch(self, w: JobWatch) -> None:
        watches = self._watches.get(w.job_id)
        if watches is not None and w in watches:
            watches.remove(w)
            if not watches:
                del self._watches[w.job_id]
        if w.waiter is not None:
            self._recorder.forget_waiter(w.job_id, w.waiter)
            w.waiter = None
        w.chunks.clear()

    def admit(self, account_id: str) -> Slot:
        """Count an open stream for the account, or refuse with 429 past max_open_streams_per_account."""
        limit = self._settings.max_open_streams_per_account
        current = self._open.get(account_id, 0)
        if limit and current >= limit:
            raise RateLimited(f"{current} streams or waiting requests are already open for this account on this "
                              f"replica (limit {limit}); close one or retry shortly", headers={"Retry-After": "1"})
        self._open[account_id] = current + 1
        return Slot(self, account_id)

    def _release(self, account_id: str) -> None:
        left = self._open.get(account_id, 1) - 1
        if left > 0:
            self._open[account_id] = left
        else:
            self._open.pop(account_id, None)

    @property
    def heartbeat_s(self) -> float:
        return self._settings.stream_heartbeat_s

    @property
    def bus_grace_s(self) -> float:
        return self._settings.stream_bus_grace_s

    @property
    def open_watches(self) -> int:
        return sum(len(ws) for ws in self._watches.values())

    # -- losing and regaining NATS ---------------------------------------------------------------------
    def _on_link(self, up: bool) -> None:
        """nats-py reconnects by itself: streams wait up to stream_bus_grace_s for it, then end with an error."""
        if self._give_up is not None:
            self._give_up.cancel()
            self._give_up = None
        if not up:
            grace = self._settings.stream_bus_grace_s
            self._give_up = asyncio.get_running_loop().call_later(grace, self._break_streams)
            log.warning("streams_waiting_for_nats", streams=self._live_streams(), grace_s=grace,
                        detail=f"live streams end with an error event if NATS is not back within {grace:g}s")
            return
        self.bus_gone = False
        for w in self._token_watches():
            w.rewind = True  # chunks published while we were away are read back from JetStream
            w.wake.set()

    def _break_streams(self) -> None:
        self._give_up = None
        if self._bus.link.up:
            return
        self.bus_gone = True
        broken = 0
        for w in self._token_watches():
            if not w.broken:
                w.broken = True
                w.wake.set()
                broken += 1
        log.error("streams_ended_nats_lost", streams=broken, down_s=round(self._bus.link.down_for(), 1),
                  detail="their jobs keep running on their nodes and are recorded when NATS is back; clients "
                         "were told to reconnect", action="check that nats-server is up and reachable from here")

    def _token_watches(self) -> list[JobWatch]:
        return [w for ws in self._watches.values() for w in ws if w.tokens]

    def _live_streams(self) -> int:
        return len(self._token_watches())

    # -- subscriptions (hot path: one call per chunk on this replica) ------------------------------
    async def _on_token(self, msg) -> None:
        parts = msg.subject.split(".")  # infernet.v1.node.<node>.job.<job>.tokens
        watches = self._watches.get(parts[subjects.JOB_FIELD]) if len(parts) == 7 else None
        if not watches:
            return
        try:
            chunk = protocol.decode(msg.data, protocol.TokenChunk)
        except protocol.DecodeError as exc:
            log.warning("malformed_token_chunk_dropped", subject=msg.subject, error=str(exc))
            return
        if chunk.node_id != parts[subjects.NODE_FIELD] or chunk.job_id != parts[subjects.JOB_FIELD]:
            log.warning("forged_token_chunk_dropped", subject=msg.subject, node_id=chunk.node_id, job_id=chunk.job_id)
            return
        now, limit = self._clock(), self._settings.stream_buffer_chunks
        for w in watches:
            if not w.tokens:
                continue
            if len(w.chunks) < limit:
                w.chunks.append(chunk)
            else:
                w.lagged = True  # the stream catches up from JetStream
            w.seen_at = now
            w.wake.set()

    async def _on_outcome(self, msg) -> None:
        """The replica's one core subscription to outcomes: frees the attempt's slot, then wakes who waits."""
        try:
            outcome = protocol.decode(msg.data, protocol.JobOutcome)
        except protocol.DecodeError:
            return  # the recorder's durable consumer logs malformed outcomes
        if subjects.publisher_and_job(msg.subject) != (outcome.node_id, outcome.job_id):
            return  # not what its publisher may say (forged): the recorder's durable consumer logs it
        # The slot first: a request answered from this outcome may submit its next job at once, and that job should
        # find the slot free (placed at submission, one commit) rather than queue behind a stale reservation.
        self._recorder.seen(outcome)
        watches = self._watches.get(outcome.job_id)
        if not watches:
            return
        now = self._clock()
        for w in watches:
            if w.outcome is None or outcome.attempt >= w.outcome.attempt:
                w.outcome = outcome
            w.seen_at = now
            w.wake.set()

    async def _check_loop(self) -> None:
        """Every sweep interval, look up idle watched jobs that ended without an outcome message."""
        interval = self._settings.sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            ids = [job_id for job_id, ws in self._watches.items()
                   if any(not w.ended and now - w.seen_at >= interval for w in ws)]
            if not ids:
                continue
            try:
                rows = await self._db.fetchall("ended_jobs", {"ids": ids})
            except StoreError as exc:
                log.warning("stream_check_failed", error=str(exc), action="retrying next interval")
                continue
            except Exception:  # never let the check die: streams would wait on their heartbeats forever
                log.exception("stream_check_error")
                continue
            for row in rows:
                for w in self._watches.get(row["id"], ()):
                    w.ended = True
                    w.wake.set()

    # -- what streams and waiters ask -------------------------------------------------------------
    async def stored_chunks(self, job_id: str, *, start: int = 1) -> tuple[list[protocol.TokenChunk], int]:
        """The job's chunks JetStream keeps from stream sequence `start` on, and where to go on from next time
        (nothing, with a warning, when JetStream does not answer)."""
        try:
            return await stored_chunks(self._bus.nc, job_id, start=start)
        except ReplayError as exc:
            log.warning("token_replay_failed", job_id=job_id, error=str(exc),
                        detail="streaming live chunks only; check JetStream health")
            return [], start

    async def mark_first_token(self, job_id: str, attempt: int, node_id: str | None,
                               lease: str = "") -> datetime | None:
        """Record that the run's first token is reaching a client: the job's first_token_at, or None when that
        run (attempt, offer lease, node) is not the job's (re-placed, an offer the node did not answer in time,
        or a node publishing for a job it does not run): its tokens must not be shown."""
        row = await self._db.fetchone("mark_first_token", {"id": job_id, "attempt": attempt, "node_id": node_id,
                                                           "lease": lease})
        return None if row is None else row["first_token_at"]

    def placed_here(self, job_id: str, attempt: int | None, node_id: str | None, lease: str = "") -> bool:
        """This replica wrote that run (attempt, offer lease) of the job to that node and offered it there, and has
        not taken the offer back: what `mark_first_token` checks in the row, known here without the round trip."""
        placed = self._dispatcher.placement_of(job_id)
        return (placed is not None and placed.attempt == attempt and placed.node_id == node_id
                and placed.lease == lease)

    async def overtaken(self, job_id: str, attempt: int) -> None:
        """The first tokens of `attempt` reached a client, but the job was sent back for another attempt before
        their `mark_first_token` landed (its node was declared lost in that instant): fail the job, node_lost,
        as the sweeper does once tokens were shown, and stop a newer attempt if one started."""
        row = await self._db.fetchone("fail_overtaken_stream", {
            "id": job_id, "attempt": attempt,
            "error_message": f"the node running attempt {attempt} was lost after its first tokens reached a client"})
        self._dispatcher.forget(job_id)  # a copy queued here must not be placed again
        log.warning("stream_overtaken_by_replacement", job_id=job_id, attempt=attempt, failed=row is not None,
                    detail="tokens of an attempt re-placed before its first-token write landed were shown: job failed")
        if row is not None and row["previous_status"] == "processing" and row["previous_node_id"]:
            await self._dispatcher.cancel_on_node(row["previous_node_id"], job_id, row["previous_attempt"],
                                                  reason="node_lost")

    async def current(self, job_id: str) -> dict | None:
        """The job's row as it is now (status, attempt, node), or None when it no longer exists."""
        return await self._db.fetchone("get_job_any", {"id": job_id})

    async def settle(self, w: JobWatch) -> dict | None:
        """The job's row once what ended it is recorded; otherwise (sent back for a retry, or a stale
        outcome) the current row after a bounded wait. None when the job no longer exists."""
        delay, started = 0.004, self._clock()
        while True:
            fut = w.waiter
            if fut is not None and not w.ended:
                if not fut.done():
                    await asyncio.wait((fut,), timeout=delay)
                if fut.done():
                    w.waiter = None
                    if not fut.cancelled():
                        return fut.result()
            row = await self._db.fetchone("get_job_any", {"id": w.job_id})
            if row is None or row["status"] in ENDED or row["status"] == "pending":
                return row
            if self._clock() - started > SETTLE_GIVE_UP_S or (w.outcome and (
                    row["attempt"] > w.outcome.attempt or row.get("lease") != w.outcome.lease)):
                return row  # the row has moved past that outcome's run (a stale outcome): nothing to wait for
            delay = min(delay * 2, 0.25)
            if w.waiter is None:
                await asyncio.sleep(delay)

    async def wait_final(self, w: JobWatch, timeout: float, *,
                         early: Callable[[protocol.JobOutcome], dict | None] | None = None,
                         undecided: object = None) -> dict | None:
        """Wait (up to `timeout` s) until the watched job has ended and its row is written; returns that row.

        `early` may answer from the outcome message itself, before the row is written: it returns the final
        row that outcome implies, None to wait for the recorder as usual, or `undecided` (an object of the
        caller's) to be asked again when the watch is woken (the caller arranges that), unless the recorder
        answers first."""
        deadline = self._clock() + timeout
        while True:
            w.wake.clear()
            outcome = w.outcome
            wait = False
            if outcome is not None and early is not None and (row := early(outcome)) is not None:
                if row is not undecided:
                    return row
                wait = not w.ended and (w.waiter is None or not w.waiter.done())
            if w.ending and not wait:
                row = await self.settle(w)
                if row is None or row["status"] in ENDED:
                    return row
                if w.outcome is outcome:
                    w.outcome = None  # sent back for another attempt (or stale): wait for the next one
                w.ended = False
                continue
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TimeoutError(f"job {w.job_id} did not end within {timeout:.0f}s")
            try:
                async with asyncio.timeout(remaining):
                    await w.wake.wait()
            except TimeoutError:
                pass
