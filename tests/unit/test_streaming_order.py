"""JobStream's merge of live chunks and JetStream replay, on a fake relay: every chunk once, in order, one attempt."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from control_plane.streaming.relay import JobWatch
from control_plane.streaming.stream import HEARTBEAT, Ended, JobStream, Tokens

JOB = "job_00000000000000aa"


class FakeRelay:
    """The relay surface JobStream uses: JetStream's stored chunks, the first-token mark and the final row."""

    def __init__(self, stored: list[protocol.TokenChunk], final: dict, *, mark_ok=lambda attempt: True,
                 placed: bool = False, mark_gate: asyncio.Event | None = None, lease_ok=lambda lease: True,
                 row: dict | None = None) -> None:
        self.stored = stored
        self.final = final
        self.mark_ok = mark_ok
        self.lease_ok = lease_ok
        self.row = row  # what `current` answers (default: pending at the highest attempt marked)
        self.marks: list[int] = []
        self.placed = placed  # this replica placed the attempt on that node: the mark runs behind the tokens
        self.mark_gate = mark_gate  # holds the mark (a slow write) until set
        self.overtaken_row: dict | None = None
        self.leases: list[str] = []

    async def stored_chunks(self, job_id: str, *, start: int = 1):
        return self.stored[start - 1:], len(self.stored) + 1

    def placed_here(self, job_id: str, attempt: int | None, node_id: str | None, lease: str = "") -> bool:
        return self.placed

    def spawn(self, coro):
        return asyncio.get_running_loop().create_task(coro)

    async def mark_first_token(self, job_id: str, attempt: int, node_id: str | None, lease: str = ""):
        self.marks.append(attempt)
        self.leases.append(lease)
        if self.mark_gate is not None:
            await self.mark_gate.wait()
        return datetime.now(timezone.utc) if self.mark_ok(attempt) and self.lease_ok(lease) else None

    async def overtaken(self, job_id: str, attempt: int) -> None:
        self.overtaken_row = {"id": job_id, "status": "failed", "attempt": attempt, "error": "node_lost"}

    async def current(self, job_id: str):
        if self.overtaken_row is not None:
            return self.overtaken_row
        if self.row is not None:
            return self.row
        return {"id": job_id, "status": "pending", "attempt": max(self.marks, default=1)}

    async def settle(self, watch):
        return self.final


def chunk(seq: int, attempt: int = 1, text: str | None = None, lease: str = "l") -> protocol.TokenChunk:
    return protocol.TokenChunk(job_id=JOB, attempt=attempt, seq=seq, text=f" w{seq}" if text is None else text,
                               lease=lease)


def result(chunks: list[protocol.TokenChunk], attempt: int = 1) -> tuple[dict, protocol.JobResult]:
    content = "".join(c.text for c in chunks)
    row = {"id": JOB, "status": "completed", "attempt": attempt, "first_token_at": None,
           "result": {"content": content, "chunks": len(chunks)}}
    outcome = protocol.JobResult(job_id=JOB, attempt=attempt, lease="l", node_id="node_a", content=content,
                                 chunks=len(chunks))
    return row, outcome


async def run_stream(relay: FakeRelay, start_row: dict, live: list, outcome, *, after_seq: int = 0):
    """Feed `live` chunks into the watch while the stream runs, then the outcome; collect what the client gets."""
    watch = JobWatch(JOB, True, None, 0.0)
    stream = JobStream(relay, watch, start_row, after_seq=after_seq, heartbeat_s=60)
    shown: list[tuple[int, str]] = []
    ended = None

    async def feed():
        for c in live:
            watch.chunks.append(c)
            watch.wake.set()
            await asyncio.sleep(0)
        watch.outcome = outcome
        watch.wake.set()

    feeder = asyncio.create_task(feed())
    async with asyncio.timeout(10):
        async for item in stream.events():
            if isinstance(item, Tokens):
                shown.extend(item.items)
            elif isinstance(item, Ended):
                ended = item
            else:
                assert item is HEARTBEAT
    await feeder
    return shown, ended


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_mix_of_live_replayed_lost_and_duplicated_chunks_is_shown_once_in_order(data):
    n = data.draw(st.integers(1, 30), label="chunks")
    chunks = [chunk(i) for i in range(1, n + 1)]
    stored_before = data.draw(st.integers(0, n), label="stored before the stream opened")
    # Live delivery: any subsequence (the rest was lost: lag, reconnect), with duplicates of earlier ones.
    delivered = [c for c in chunks if data.draw(st.booleans(), label=f"live {c.seq}")]
    dups = data.draw(st.lists(st.sampled_from(chunks), max_size=5), label="duplicates")
    live = sorted(delivered + dups, key=lambda c: c.seq)
    row, outcome = result(chunks)
    relay = FakeRelay(chunks, row, placed=data.draw(st.booleans(), label="placed by this replica"))
    start = {"id": JOB, "status": "processing" if stored_before else "pending", "attempt": 1 if stored_before else 0}
    shown, ended = asyncio.run(run_stream(relay, start, live, outcome))
    assert [s for s, _ in shown] == list(range(1, n + 1))
    assert "".join(t for _, t in shown) == row["result"]["content"]
    assert ended.row["result"] is row["result"] and relay.marks == [1]
    assert ended.row["first_token_at"] is not None  # the mark shows on the final row


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.data())
def test_last_event_id_shows_only_what_follows(n, data):
    chunks = [chunk(i) for i in range(1, n + 1)]
    after = data.draw(st.integers(0, n))
    row, outcome = result(chunks)
    relay = FakeRelay(chunks, row)
    start = {"id": JOB, "status": "processing", "attempt": 1, "first_token_at": datetime.now(timezone.utc)}
    shown, _ = asyncio.run(run_stream(relay, start, chunks[after:], outcome, after_seq=after))
    assert [s for s, _ in shown] == list(range(after + 1, n + 1))
    assert relay.marks == []  # a first token had already reached a client


def test_chunks_of_another_attempt_are_dropped_once_tokens_were_shown():
    chunks = [chunk(i) for i in range(1, 6)]
    row, outcome = result(chunks)
    live = [chunks[0], chunk(2, attempt=2, text="X"), chunk(3, attempt=0, text="Y"), *chunks[1:]]
    shown, _ = asyncio.run(run_stream(FakeRelay(chunks, row), {"id": JOB, "status": "pending", "attempt": 0},
                                      live, outcome))
    assert "".join(t for _, t in shown) == row["result"]["content"]


def test_an_attempt_re_placed_before_its_first_token_was_shown_is_skipped():
    """The mark fails for attempt 1 (it was re-placed): none of its chunks show; attempt 2's do."""
    first = [chunk(i, attempt=1, text=f" old{i}") for i in range(1, 4)]
    second = [chunk(i, attempt=2, text=f" new{i}") for i in range(1, 5)]
    row, outcome = result(second, attempt=2)
    relay = FakeRelay(first + second, row, mark_ok=lambda attempt: attempt == 2)
    shown, _ = asyncio.run(run_stream(relay, {"id": JOB, "status": "pending", "attempt": 0}, first + second, outcome))
    assert "".join(t for _, t in shown) == " new1 new2 new3 new4"
    assert relay.marks == [1, 2]


def test_text_no_chunk_carried_is_sent_from_the_recorded_result():
    """Expired from JetStream (or never sent by a failing node): the recorded text completes the stream."""
    chunks = [chunk(i) for i in range(1, 5)]
    row, outcome = result(chunks)
    shown, _ = asyncio.run(run_stream(FakeRelay(chunks[:1], row), {"id": JOB, "status": "processing", "attempt": 1},
                                      chunks[:2], outcome))
    assert shown == [(1, " w1"), (2, " w2"), (4, " w3 w4")]
    assert "".join(t for _, t in shown) == row["result"]["content"]


def test_first_tokens_of_an_attempt_placed_here_are_shown_before_their_mark_lands():
    """This replica placed the attempt on that node: the first chunk goes out while the first-token write is still
    held, and the final row carries the mark once it lands."""
    async def scenario():
        chunks = [chunk(i) for i in range(1, 4)]
        row, outcome = result(chunks)
        gate = asyncio.Event()
        relay = FakeRelay(chunks, row, placed=True, mark_gate=gate)
        watch = JobWatch(JOB, True, None, 0.0)
        stream = JobStream(relay, watch, {"id": JOB, "status": "pending", "attempt": 0}, heartbeat_s=60).events()
        watch.chunks.append(chunks[0])
        watch.wake.set()
        async with asyncio.timeout(10):
            first = await anext(stream)
        assert isinstance(first, Tokens) and first.items == [(1, " w1")]
        await asyncio.sleep(0)  # the write starts behind the shown token, and waits
        assert relay.marks == [1] and not gate.is_set()
        gate.set()
        watch.chunks.extend(chunks[1:])
        watch.outcome = outcome
        watch.wake.set()
        async with asyncio.timeout(10):
            rest = [item async for item in stream]
        assert isinstance(rest[-1], Ended) and rest[-1].row["first_token_at"] is not None
    asyncio.run(scenario())


def test_an_attempt_sent_back_before_its_first_token_write_landed_fails_the_job():
    """The write finds the attempt re-placed in the instant after its first chunk was shown: the job is failed
    (node_lost) rather than run again, and the stream ends with that row; no other attempt's chunk is shown."""
    first = [chunk(i, attempt=1, text=f" old{i}") for i in range(1, 3)]
    second = [chunk(i, attempt=2, text=f" new{i}") for i in range(1, 3)]
    row, outcome = result(second, attempt=2)
    relay = FakeRelay(first, row, placed=True, mark_ok=lambda attempt: False)
    shown, ended = asyncio.run(run_stream(relay, {"id": JOB, "status": "pending", "attempt": 0}, first + second,
                                          outcome))
    assert "new" not in "".join(t for _, t in shown) and shown[0] == (1, " old1")
    assert ended.row["status"] == "failed" and ended.row["error"] == "node_lost"


def test_a_run_of_an_offer_nobody_answered_is_never_shown_though_it_has_the_same_attempt():
    """A silent node started attempt 1 under lease "stale"; the job was offered again as attempt 1 under "fresh".
    The stale run's chunks come first and interleave: the mark (attempt, lease, node) refuses them, the row
    names the fresh run, and only its text is shown."""
    stale = [chunk(i, text=f" LEAK{i}", lease="stale") for i in range(1, 4)]
    fresh = [chunk(i, text=f" ok{i}", lease="fresh") for i in range(1, 5)]
    live = [stale[0], fresh[0], stale[1], fresh[1], stale[2], *fresh[2:]]
    final = {"id": JOB, "status": "completed", "attempt": 1, "lease": "fresh", "first_token_at": None,
             "result": {"content": " ok1 ok2 ok3 ok4", "chunks": 4}}
    outcome = protocol.JobResult(job_id=JOB, attempt=1, lease="fresh", node_id="", content=" ok1 ok2 ok3 ok4",
                                 chunks=4)
    relay = FakeRelay(live, final, lease_ok=lambda lease: lease == "fresh",
                      row={"id": JOB, "status": "processing", "attempt": 1, "lease": "fresh", "node_id": ""})
    shown, _ = asyncio.run(run_stream(relay, {"id": JOB, "status": "pending", "attempt": 1}, live, outcome))
    assert "".join(t for _, t in shown) == " ok1 ok2 ok3 ok4"
    assert [s for s, _ in shown] == [1, 2, 3, 4]
    assert "fresh" in relay.leases and relay.leases[-1] == "fresh"


def test_a_stream_opened_on_the_fresh_run_ignores_the_stale_run_of_the_same_attempt():
    stale = [chunk(i, text=f" LEAK{i}", lease="stale") for i in range(1, 4)]
    fresh = [chunk(i, text=f" ok{i}", lease="fresh") for i in range(1, 3)]
    final = {"id": JOB, "status": "completed", "attempt": 1, "lease": "fresh", "first_token_at": None,
             "result": {"content": " ok1 ok2", "chunks": 2}}
    outcome = protocol.JobResult(job_id=JOB, attempt=1, lease="stale", node_id="", content=" LEAK1 LEAK2 LEAK3",
                                 chunks=3)  # the stale run's outcome arrives too: it is not the job's
    start = {"id": JOB, "status": "processing", "attempt": 1, "lease": "fresh", "node_id": ""}
    relay = FakeRelay(stale + fresh, final, lease_ok=lambda lease: lease == "fresh", row=start)
    shown, ended = asyncio.run(run_stream(relay, start, [*stale, *fresh], outcome))
    assert "".join(t for _, t in shown) == " ok1 ok2" and ended.row["result"]["content"] == " ok1 ok2"
