"""One client's stream of one job: live chunks and JetStream replay merged into one ordered, gap-free sequence.

`JobStream.events()` yields `Tokens` (chunks ready for the client, in sequence order, each exactly once),
`HEARTBEAT` when nothing happened for `heartbeat_s`, and finally `Ended` with the job's recorded row; it raises
BusError when this replica's NATS connection stayed lost past the relay's grace (the job keeps running).
Only one run's chunks ever reach the client: before the first chunk shown, the run must be the job's, and
`mark_first_token` (one UPDATE per job) records that a token was shown, after which the job is never re-placed;
chunks of any other run are dropped. A run is named by its attempt, its offer's lease and its node: the lease is
unique per offer, so two runs of one attempt number (a node that did not answer its offer in time may have
started it anyway) are told apart. When this replica placed that run itself (the usual case) it knows so without
a query, and the write follows the first chunk instead of preceding it (off the time-to-first-token path);
should the job have been sent back in that instant, the write finds so and the job is failed (node_lost), as it
would have been after the write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import protocol
from control_plane.bus import BusError
from control_plane.streaming.relay import ENDED, JobWatch, TokenRelay

#: Seconds between replay attempts while a gap in the live sequence stays open.
GAP_RETRY_S = 0.05


@dataclass(slots=True)
class Tokens:
    """Chunks ready for the client: (sequence number, text) pairs in order."""

    items: list[tuple[int, str]]


@dataclass(slots=True)
class Ended:
    """The job ended and its row is written; `outcome` is the message that ended it when this replica saw it."""

    row: dict[str, Any]
    outcome: protocol.JobOutcome | None


HEARTBEAT = object()


class JobStream:
    """Merges a watch's live chunks with replay; `after_seq` (Last-Event-ID) skips what the client has."""

    def __init__(self, relay: TokenRelay, watch: JobWatch, row: dict[str, Any], *, after_seq: int = 0,
                 heartbeat_s: float = 15.0, clock=time.monotonic) -> None:
        self._relay = relay
        self._watch = watch
        self.job_id = watch.job_id
        self.row = row
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        status, attempt = row.get("status"), row.get("attempt") or 0
        #: The attempt whose chunks this stream shows; None until one starts.
        self._attempt: int | None = attempt if status != "pending" and attempt else None
        #: The node that attempt runs on (chunks name their node, and the bus proves it): others are ignored.
        self._node: str | None = row.get("node_id") if self._attempt is not None else None
        #: The lease of the offer that run answers (None: not known, any).
        self._lease: str | None = row.get("lease") if self._attempt is not None else None
        #: Runs (attempt, lease, node) found not to be the job's: chunks from them are never shown (a lease is
        #: never offered twice, so a run the row has moved past never comes back).
        self._refused: set[tuple[int, str, str]] = set()
        #: Attempts known to be over without their tokens being shown. A pending row's own attempt number may
        #: be offered again (after an offer nobody answered), so only the ones below it.
        self._stale_upto = attempt - 1 if status == "pending" else 0
        #: A chunk of another run of the adopted attempt arrived before anything was shown: ask the row which.
        self._contested = False
        self._after = after_seq
        self._next = after_seq + 1
        self._pending: dict[int, str] = {}
        self._skipped: dict[int, int] = {}  # lengths of chunks the client already had (for the content fallback)
        self._chars = 0  # characters shown by this stream
        self._shown = 0  # chunks shown by this stream
        #: When the first token reached a client (this stream's mark, or an earlier one); None: not yet.
        self._marked = row.get("first_token_at")
        #: This stream's mark_first_token, running behind the tokens it already showed (see _mark_behind).
        self._marking: asyncio.Task | None = None
        self._live = status not in ENDED  # opened before the job ended (not a replay of a finished job)
        self._gap_retry_at = 0.0
        self._replayed_upto = 1  # JetStream stream sequence the next backfill starts at

    async def events(self) -> AsyncIterator[Tokens | Ended | object]:
        w, relay = self._watch, self._relay
        if self.row.get("status") in ENDED:
            async for item in self._finish(self.row, w.outcome):
                yield item
            return
        if self.row.get("status") == "processing":
            await self._backfill()
        heartbeat_at = self._clock() + self._heartbeat_s
        while True:
            w.wake.clear()
            while w.chunks:
                self._accept(w.chunks.popleft())
            if w.rewind:  # NATS came back: read what was published while it was away
                w.rewind = w.lagged = False
                self._replayed_upto = 1
                await self._backfill()
            elif w.lagged:
                w.lagged = False
                await self._backfill()
            elif self._gap() and self._clock() >= self._gap_retry_at:
                self._gap_retry_at = self._clock() + GAP_RETRY_S
                await self._backfill()
            if self._contested and self._shown == 0 and self._marked is None:
                self._contested = False
                await self._follow_row()
                await self._backfill()
            ready = await self._ready(mark=True)
            if ready:
                yield Tokens(ready)
                heartbeat_at = self._clock() + self._heartbeat_s
            outcome = w.outcome
            if outcome is not None and self._attempt is not None and outcome.attempt < self._attempt:
                w.outcome = outcome = None  # a late outcome of an attempt this stream already moved past
            if w.ending:
                row = await relay.settle(w)
                if row is None or row["status"] in ENDED:
                    async for item in self._finish(row, w.outcome):
                        yield item
                    return
                # Sent back for another attempt (none of its tokens were shown), or the outcome was stale.
                if w.outcome is outcome:
                    w.outcome = None
                w.ended = False
                if row["status"] == "pending" and self._shown == 0:
                    self._drop_attempt(row["attempt"] or 0)
                continue
            if w.broken:
                raise BusError(f"this control-plane replica lost its connection to NATS (the bus that carries "
                               f"tokens) and it has not come back within {self._relay.bus_grace_s:g}s, so no "
                               f"more tokens can reach this stream")
            timeout = heartbeat_at - self._clock()
            if self._gap():
                timeout = min(timeout, GAP_RETRY_S)
            if timeout > 0:
                try:
                    async with asyncio.timeout(timeout):
                        await w.wake.wait()
                    continue
                except TimeoutError:
                    pass
            if self._clock() >= heartbeat_at:
                yield HEARTBEAT
                heartbeat_at = self._clock() + self._heartbeat_s

    # -- ordering ------------------------------------------------------------------------------------
    def _accept(self, chunk: protocol.TokenChunk) -> None:
        if (chunk.attempt, chunk.lease, chunk.node_id) in self._refused:
            return
        attempt = self._attempt
        if attempt is None or (chunk.attempt > attempt and self._shown == 0):
            if chunk.attempt <= self._stale_upto:
                return
            self._adopt(chunk.attempt, chunk.node_id, chunk.lease)
        elif chunk.attempt != attempt or (self._node is not None and chunk.node_id != self._node) or (
                self._lease is not None and chunk.lease != self._lease):
            if chunk.attempt == attempt and self._shown == 0 and self._marked is None:
                self._contested = True  # two runs of one attempt: the job's row says which one is its
            return
        if chunk.seq >= self._next:
            self._pending[chunk.seq] = chunk.text
        elif chunk.seq <= self._after:
            self._skipped[chunk.seq] = len(chunk.text)

    def _adopt(self, attempt: int, node_id: str | None, lease: str | None) -> None:
        self._attempt = attempt
        self._node = node_id
        self._lease = lease
        self._pending.clear()
        self._skipped.clear()
        self._next = self._after + 1

    def _refuse(self) -> None:
        """The adopted run is not the job's (re-placed, an offer nobody answered, or a node publishing for a job
        it does not run): never show its chunks, and read what JetStream kept again for the job's run."""
        if self._attempt is not None and self._node is not None:
            self._refused.add((self._attempt, self._lease or "", self._node))
        self._attempt = None
        self._node = None
        self._lease = None
        self._pending.clear()
        self._skipped.clear()
        self._next = self._after + 1
        self._replayed_upto = 1

    def _drop_attempt(self, row_attempt: int) -> None:
        """The job went back to pending before any of the adopted run's tokens reached this client: that run is
        over (its attempt number may run again, under another lease)."""
        self._refuse()
        self._stale_upto = max(self._stale_upto, row_attempt - 1)

    async def _follow_row(self) -> None:
        """The adopted run may not be the job's: take the run the job's row names (none while it is pending)."""
        row = await self._relay.current(self.job_id)
        if row is None:
            return  # the job is gone: its end says so
        status = row.get("status")
        run = (row.get("attempt"), row.get("node_id"), row.get("lease")) if status == "processing" else None
        if run is not None and run == (self._attempt, self._node, self._lease):
            return  # the adopted run is the job's
        self._refuse()
        if status == "pending":
            self._stale_upto = max(self._stale_upto, (row.get("attempt") or 0) - 1)
        elif run is not None and run[0]:
            self._adopt(*run)

    def _gap(self) -> bool:
        return bool(self._pending) and self._next not in self._pending

    async def _backfill(self) -> None:
        """Take what JetStream kept since the last backfill (each stored chunk is read once per stream)."""
        chunks, self._replayed_upto = await self._relay.stored_chunks(self.job_id, start=self._replayed_upto)
        for chunk in chunks:
            self._accept(chunk)

    async def _ready(self, *, mark: bool) -> list[tuple[int, str]]:
        ready: list[tuple[int, str]] = []
        while self._next in self._pending:
            if mark and self._marked is None and self._marking is None:
                if self._relay.placed_here(self.job_id, self._attempt, self._node, self._lease or ""):
                    # The row says what this replica wrote there itself: show now, record behind.
                    self._marking = self._relay.spawn(self._mark_behind(self._attempt, self._node, self._lease or ""))
                    continue
                self._marked = await self._relay.mark_first_token(self.job_id, self._attempt, self._node,
                                                                  self._lease or "")
                if self._marked is None:
                    await self._follow_row()  # that run is not the job's (any more): never show it
                    return ready
            text = self._pending.pop(self._next)
            ready.append((self._next, text))
            self._chars += len(text)
            self._next += 1
        self._shown += len(ready)
        return ready

    async def _mark_behind(self, attempt: int, node: str | None, lease: str):
        """The first-token write of a run whose tokens are already being shown. Finding the run sent back
        meanwhile (its node declared lost in that instant), it fails the job (node_lost) and ends the stream."""
        marked = await self._relay.mark_first_token(self.job_id, attempt, node, lease)
        if marked is None:
            await self._relay.overtaken(self.job_id, attempt)
            self._watch.ended = True
        self._watch.wake.set()
        return marked

    # -- the end -------------------------------------------------------------------------------------
    async def _finish(self, row: dict | None, outcome: protocol.JobOutcome | None) -> AsyncIterator[Tokens | Ended]:
        """Show whatever the ended attempt produced that this client has not seen, then the end."""
        if self._marking is not None:
            marked, self._marking = await self._marking, None
            if marked is None:  # failed as overtaken: end with the row that says so
                row = await self._relay.current(self.job_id) or row
            self._marked = marked
        if row is None:
            row = {**self.row, "status": "failed", "error": "not_found",
                   "error_message": f"job {self.job_id} no longer exists"}
            yield Ended(row, outcome)
            return
        attempt = row.get("attempt") or 0
        lease = row.get("lease")
        same_run = self._attempt == attempt and (self._lease is None or lease is None or self._lease == lease)
        if attempt and (same_run or self._shown == 0):
            node = row.get("node_id")
            if not same_run or (node is not None and self._node != node and self._shown == 0):
                self._adopt(attempt, node, lease)
                self._refused.discard((attempt, lease or "", node or ""))
                self._replayed_upto = 1  # read that run's chunks from the start
            result = row.get("result") or {}
            total = result.get("chunks")
            if total is None and outcome is not None and outcome.attempt == attempt and (
                    lease is None or outcome.lease == lease):
                total = outcome.chunks
            w = self._watch
            while w.chunks:
                self._accept(w.chunks.popleft())
            if total is None or self._next <= total:
                await self._backfill()
            ready = await self._ready(mark=False)
            # The recorded text is the truth: what no chunk carried (expired from JetStream, or never sent,
            # e.g. coalesced text a failing node did not flush) follows as one last chunk.
            before = sum(self._skipped.values()) if len(self._skipped) == self._after else None
            content = result.get("content") or ""
            if before is not None and len(content) > before + self._chars:
                ready.append((max(self._next, total or 0), content[before + self._chars:]))
                self._next = ready[-1][0] + 1
            if ready and self._marked is None and self._live:
                # The job ended before its first token reached this client: record when it did (the job is
                # final, so nothing depends on the answer any more).
                self._marked = await self._relay.mark_first_token(self.job_id, attempt, self._node,
                                                                  self._lease or "")
            if ready:
                yield Tokens(ready)
        if self._marked is not None and row.get("first_token_at") is None:
            row = row | {"first_token_at": self._marked}  # recorded before this stream's mark landed
        yield Ended(row, outcome)
