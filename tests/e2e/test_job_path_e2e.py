"""The /v1 answer from the result message, with real processes: the replica that answered dies before it could
record the job; another replica records it from JetStream, once, and charges what the answer said."""

from __future__ import annotations

import asyncio
import json

import httpx
import psycopg

from tests.e2e.cluster import auth, wait_job, wait_model
from tests.fixtures.waiting import wait_until

MODEL = "qwen2.5:7b"


def _recorded(proc, job_id: str) -> int:
    """How many `job_completed` log lines a control-plane process wrote for the job."""
    count = 0
    for line in proc.log_text().splitlines():
        if '"job_completed"' in line and job_id in line:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            count += record.get("event") == "job_completed" and record.get("job_id") == job_id
    return count


async def test_replica_killed_after_answering_from_the_result_the_job_is_recorded_and_charged_once(cluster):
    _, engine = cluster.start_double(MODEL, "--stall-after", "2", "--token-count", "6")
    key = cluster.key()
    token = cluster.register_node("n")
    cp_a, url_a = cluster.start_control_plane(name="cp-a")
    cluster.start_node(token, engine)
    db = cluster.database_url

    async def processing():
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            row = await (await conn.execute("SELECT id FROM jobs WHERE status = 'processing'")).fetchone()
        return row[0] if row else None

    async with httpx.AsyncClient(base_url=url_a, timeout=60) as client, httpx.AsyncClient(timeout=30) as control:
        await wait_model(client, key, MODEL)
        request = asyncio.create_task(client.post(
            "/v1/chat/completions", headers=auth(key),
            json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}))
        job_id = await wait_until(processing, timeout=60, message="the job never started")
        async with await psycopg.AsyncConnection.connect(db) as holder:
            # The only replica cannot record the job: its UPDATE waits on this row lock.
            await holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
            assert (await control.post(f"{engine}/_double/release")).status_code == 200
            r = await asyncio.wait_for(request, timeout=60)
            assert r.status_code == 200, r.text
            async with await psycopg.AsyncConnection.connect(db, autocommit=True) as peek:
                status = (await (await peek.execute("SELECT status FROM jobs WHERE id = %s", (job_id,))).fetchone())[0]
            assert status == "processing"  # answered, not yet recorded
            cp_a.kill()  # SIGKILL: it never acks the result it was recording
            await holder.rollback()
    cp_b, url_b = cluster.start_control_plane(name="cp-b")
    async with httpx.AsyncClient(base_url=url_b, timeout=30) as client:
        # JetStream redelivers the unacknowledged result after its ack wait (30 s).
        job = await wait_job(client, key, job_id, timeout=120)
    assert job["status"] == "completed"
    assert job["result"]["content"] == r.json()["choices"][0]["message"]["content"]
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        entries = await (await conn.execute(
            "SELECT kind, amount FROM credit_ledger WHERE job_id = %s ORDER BY id", (job_id,))).fetchall()
    assert [kind for kind, _ in entries] == ["reserve", "charge", "release"]
    assert -dict(entries)["charge"] == int(r.headers["x-credits-used"]) == job["credits_charged"] > 0
    # Who wrote the row: the killed replica's PostgreSQL session may still commit the UPDATE it had sent once
    # the lock goes (the server has not noticed its client died), and then the second replica finds the row
    # completed and ignores the redelivered result; otherwise the second replica records it. Either way once,
    # as the ledger above shows, and never logged by the dead process.
    assert _recorded(cp_a, job_id) == 0 and _recorded(cp_b, job_id) <= 1
