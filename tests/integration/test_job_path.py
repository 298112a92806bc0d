"""The short job path: one commit at submission, /v1 answered from the result message, recorded and charged once."""

from __future__ import annotations

import asyncio

import httpx
import psycopg

from control_plane.accounts.service import create_key, ensure_account
from tests.doubles.ollama_double import OllamaDouble, default_tokens
from tests.fixtures.waiting import wait_until
from tests.sse import collect, tokens

MODEL = "qwen2.5:7b"
PROMPT = "Count to three"


async def _processing_job(database_url: str) -> str:
    async def found():
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            row = await (await conn.execute("SELECT id FROM jobs WHERE status = 'processing'")).fetchone()
        return row[0] if row else None
    return await wait_until(found, timeout=30, message="no job ever started processing")


async def _ledger(database_url: str, job_id: str) -> list[tuple[str, int, int]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT kind, amount, held FROM credit_ledger WHERE job_id = %s ORDER BY id", (job_id,))
        return await cur.fetchall()


async def test_v1_answers_from_the_result_while_the_recorder_is_held_then_records_and_charges_once(
        stack, database_url):
    """The recorder cannot write the row (a transaction holds it locked): the client still gets its answer from
    the result message, with the charge the settlement will make; once the lock goes, the row is recorded and
    the job charged exactly once, for that amount."""
    async with OllamaDouble(models=[MODEL], token_count=8, stall_after=3) as d:
        key = await stack.key()
        await stack.add_node(d.url)
        await stack.wait_nodes_serving(MODEL)
        request = asyncio.create_task(stack.client.post(
            "/v1/chat/completions", headers=stack.auth(key),
            json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 32}))
        job_id = await _processing_job(database_url)
        async with await psycopg.AsyncConnection.connect(database_url) as holder:
            await holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))  # the recorder waits
            d.release()
            r = await asyncio.wait_for(request, timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as peek:
                status = (await (await peek.execute("SELECT status FROM jobs WHERE id = %s", (job_id,))).fetchone())[0]
            assert status == "processing"  # answered before the row could be written
            assert await _ledger(database_url, job_id) == [("reserve", 0, await _held(database_url, job_id))]
            # Read your writes: a read of the job through this replica waits for the recorder.
            read = asyncio.create_task(stack.client.get(f"/api/v1/jobs/{job_id}", headers=stack.auth(key)))
            listed = asyncio.create_task(stack.client.get("/api/v1/jobs", headers=stack.auth(key)))
            await holder.rollback()
        assert (await read).json()["status"] == "completed"
        assert [(j["id"], j["status"]) for j in (await listed).json()["jobs"]] == [(job_id, "completed")]
        job = await stack.wait_job(key, job_id)
    assert body["id"] == job_id and r.headers["x-job-id"] == job_id
    assert body["choices"][0]["message"]["content"] == "".join(default_tokens(PROMPT, 8))
    assert body["usage"]["completion_tokens"] == 8 and job["status"] == "completed"
    assert job["result"]["content"] == body["choices"][0]["message"]["content"]
    kinds = [kind for kind, _, _ in await _ledger(database_url, job_id)]
    assert kinds == ["reserve", "charge", "release"]  # settled once
    charge = [amount for kind, amount, _ in await _ledger(database_url, job_id) if kind == "charge"][0]
    assert int(r.headers["x-credits-used"]) == -charge == job["credits_charged"] > 0


async def _held(database_url: str, job_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (await conn.execute("SELECT held FROM credit_ledger WHERE job_id = %s AND kind = 'reserve'",
                                        (job_id,))).fetchone()
    return row[0]


async def test_a_failed_job_is_never_answered_early(stack, database_url):
    """A failure is not a result: the request waits for the recorded row and gets its error."""
    async with OllamaDouble(models=[MODEL], error_after=2, error_message="model crashed") as d:
        key = await stack.key()
        await stack.add_node(d.url)
        await stack.wait_nodes_serving(MODEL)
        r = await stack.client.post("/v1/chat/completions", headers=stack.auth(key),
                                    json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]})
    assert r.status_code == 502 and "model crashed" in r.json()["error"]["message"], r.text
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        (job_id,) = await (await conn.execute("SELECT id FROM jobs")).fetchone()
    job = await stack.wait_job(key, job_id)
    assert job["status"] == "failed"
    assert [kind for kind, _, _ in await _ledger(database_url, job_id)] == ["reserve", "refund"]


async def test_a_refused_submission_gives_back_the_slot_it_was_placed_on(stack, database_url):
    """With a free node the job is placed before its row is written; a 402 must not keep that slot."""
    async with OllamaDouble(models=[MODEL]) as d:
        await stack.add_node(d.url, slots=1)
        await stack.wait_nodes_serving(MODEL)
        account = await ensure_account(stack.runtime.db, "broke", credits=0)
        broke = (await create_key(stack.runtime.db, account["id"])).key
        for _ in range(3):
            r = await stack.submit(broke, model=MODEL)
            assert r.status_code == 402, r.text
        node = stack.runtime.registry.get(stack.nodes[0].node_id)
        assert node.free_slots == 1
        key = await stack.key()
        r = await stack.submit(key, model=MODEL)
        assert r.status_code == 200 and r.json()["status"] == "pending"
        job = await stack.wait_job(key, r.json()["id"])
    assert job["status"] == "completed" and job["attempt"] == 1


async def test_submission_on_a_free_node_is_one_statement_and_the_job_is_processing_there(stack, database_url):
    """The row is written already processing on the node (attempt 1, its lease), so no second commit is needed
    before the node is asked; the job then completes on that node."""
    async with OllamaDouble(models=[MODEL], stall_after=1) as d:
        key = await stack.key()
        node = await stack.add_node(d.url)
        await stack.wait_nodes_serving(MODEL)
        r = await stack.submit(key, model=MODEL)
        assert r.status_code == 200 and r.json()["status"] == "pending"
        job_id = r.json()["id"]
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            row = await (await conn.execute(
                "SELECT status, attempt, node_id, lease IS NOT NULL, assigned_at IS NOT NULL FROM jobs WHERE id = %s",
                (job_id,))).fetchone()
        assert row == ("processing", 1, node.node_id, True, True)
        await d.wait_active(1)
        d.release()
        job = await stack.wait_job(key, job_id)
    assert job["status"] == "completed" and job["attempt"] == 1 and job["node_id"] == node.node_id


async def test_only_a_job_someone_may_stream_has_its_token_chunks_published(stack):
    """A non-streamed /v1 request only waits for its result: its node publishes no token chunk (none reaches the
    token replay stream), only the result. A native job may be streamed whatever it was submitted with, so its
    chunks go out; and the /v1 job streamed anyway through GET /api/v1/jobs/{id}/stream gets its whole text."""
    async with OllamaDouble(models=[MODEL], token_count=8) as d:
        key = await stack.key()
        await stack.add_node(d.url)
        await stack.wait_nodes_serving(MODEL)
        text = "".join(default_tokens(PROMPT, 8))
        r = await stack.client.post("/v1/chat/completions", headers=stack.auth(key),
                                    json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == text
        quiet = r.headers["x-job-id"]
        assert (await stack.wait_job(key, quiet))["result"]["content"] == text
        # Published chunks precede the result on the node's connection, so the stream holds them by now.
        assert (await stack.runtime.relay.stored_chunks(quiet))[0] == []

        native = (await stack.submit(key, model=MODEL, messages=[{"role": "user", "content": PROMPT}])).json()["id"]
        assert (await stack.wait_job(key, native))["result"]["content"] == text
        chunks = (await stack.runtime.relay.stored_chunks(native))[0]
        assert chunks and "".join(c.text for c in chunks) == text

        async with stack.client.stream("GET", f"/api/v1/jobs/{quiet}/stream", headers=stack.auth(key)) as s:
            events = await collect(s)
    assert "".join(t for _, t in tokens(events)) == text and events[-1].event == "done"
