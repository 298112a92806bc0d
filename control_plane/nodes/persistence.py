"""Keeps the nodes table current from advertisements by writing only what changed, in small batches off the hot path.

An advertisement costs O(1) here: its stable part (models, slots, engine, labels...) is compared with what
was last written, and the node is queued only when that changed, or when its stored `last_seen_at` is more
than `seen_resolution_s` old. A background task writes the queue a small batch per statement, so no
advertisement and no request ever waits on the database, and 10,000 quiet nodes cost about
10,000 / seen_resolution_s row updates a second, never one statement with every node in it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import structlog

from control_plane.store import Database, StoreError
from control_plane.store.database import jsonb
from protocol.messages import Advertisement

log = structlog.get_logger("control_plane.nodes.persistence")

#: Seconds a node's stored last_seen_at may lag behind its latest advertisement.
SEEN_RESOLUTION_S = 60.0
#: Nodes per statement; the jsonb of a changed advertisement is encoded on the event loop, so keep it small.
BATCH = 100


def stable_part(ad: Advertisement) -> tuple:
    """What the nodes table keeps of an advertisement and that does not change every heartbeat."""
    return (ad.agent_version, ad.engine, ad.engine_version, ad.engine_ok, ad.state, ad.slots, ad.models,
            tuple((g.name, g.vram_total_mb) for g in ad.gpus), tuple(sorted(ad.labels.items())), ad.boot_id,
            ad.interval_s)


def stored_record(ad: Advertisement) -> dict:
    """The advertisement as stored in nodes.last_advertisement (never the token)."""
    record = msgspec.to_builtins(ad)
    record.pop("token", None)
    return record


class NodeStateWriter:
    """Per-node change detection plus a queue of nodes to write; one instance per replica."""

    def __init__(self, db: Database, *, seen_resolution_s: float = SEEN_RESOLUTION_S, batch: int = BATCH,
                 interval_s: float = 1.0, max_batches_per_tick: int = 10,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._seen_resolution_s = seen_resolution_s
        self._batch = max(batch, 1)
        self._interval_s = interval_s
        self._max_batches = max_batches_per_tick
        self._clock = clock
        #: node id -> (stable part, unix time of last_seen_at) as last queued for writing
        self._written: dict[str, tuple[tuple, float]] = {}
        #: node id -> (seen at, the advertisement when its stable part changed, else None: last_seen_at only)
        self._dirty: dict[str, tuple[float, Advertisement | None]] = {}
        self.rows_written = 0
        self.statements = 0

    def note(self, ad: Advertisement) -> None:
        """One advertisement was accepted: queue the node if what the table holds of it is now out of date."""
        now = self._clock()
        stable = stable_part(ad)
        before = self._written.get(ad.node_id)
        if before is None or before[0] != stable:
            self._written[ad.node_id] = (stable, now)
            self._dirty[ad.node_id] = (now, ad)
        elif now - before[1] >= self._seen_resolution_s:
            self._touch(ad, stable, now)

    def seen(self, ad: Advertisement) -> None:
        """`note` for an advertisement whose stable part equals the node's previous one (a repeat): only the
        age of the stored last_seen_at is checked."""
        before = self._written.get(ad.node_id)
        if before is None:
            self.note(ad)
            return
        now = self._clock()
        if now - before[1] >= self._seen_resolution_s:
            self._touch(ad, before[0], now)

    def _touch(self, ad: Advertisement, stable: tuple, now: float) -> None:
        """Queue the node's last_seen_at to be written (what the table holds of it is otherwise current)."""
        self._written[ad.node_id] = (stable, now)
        queued = self._dirty.get(ad.node_id)
        # A queued full advertisement stays full (its change is not written yet); it just gets newer.
        self._dirty[ad.node_id] = (now, ad if queued is not None and queued[1] is not None else None)

    def forget(self, node_id: str) -> None:
        """The registry forgot the node: a later advertisement is written in full again."""
        self._written.pop(node_id, None)

    @property
    def backlog(self) -> int:
        return len(self._dirty)

    async def run(self) -> None:
        """Write the queue every interval, a batch per statement, yielding to the event loop between them."""
        while True:
            await asyncio.sleep(self._interval_s)
            # Bounded per tick: after a start every node is new, and its first rows must not crowd out the
            # advertisements still arriving (10,000 nodes: written over about 10 s, 10 statements a second).
            await self.write_pending(self._max_batches)

    async def write_pending(self, max_batches: int | None = None) -> None:
        """Write queued nodes (at most `max_batches` statements' worth; all when None)."""
        done = 0
        while self._dirty and (max_batches is None or done < max_batches):
            if not await self._write_batch():
                return
            done += 1

    async def _write_batch(self) -> bool:
        """Write up to one batch; False when the database refused it (the nodes are queued again)."""
        ids = []
        for node_id in self._dirty:
            ids.append(node_id)
            if len(ids) == self._batch:
                break
        batch = {node_id: self._dirty.pop(node_id) for node_id in ids}
        full = [i for i in ids if batch[i][1] is not None]
        seen = [i for i in ids if batch[i][1] is None]
        try:
            if full:
                await self._db.execute("touch_nodes_changed", {"rows": jsonb(
                    [{"id": i, "t": batch[i][0], "ad": stored_record(batch[i][1])} for i in full])})
                self.statements += 1
            if seen:
                await self._db.execute("touch_nodes_seen", {"rows": jsonb([{"id": i, "t": batch[i][0]} for i in seen])})
                self.statements += 1
        except StoreError as exc:
            log.warning("node_persist_failed", error=str(exc), nodes=len(ids), action="retrying next interval")
            for node_id, entry in batch.items():  # newer entries queued meanwhile win
                self._dirty.setdefault(node_id, entry)
            return False
        self.rows_written += len(ids)
        return True
