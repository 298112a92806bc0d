"""max_wallclock_secs end to end: on expiry the engine is stopped, the job fails with `timeout`, credits return."""

from __future__ import annotations

import psycopg

from tests.doubles.ollama_double import OllamaDouble


async def test_a_running_job_past_its_budget_is_stopped_and_refunded(stack, database_url):
    async with OllamaDouble(models=["qwen2.5:7b"], delay_ms=200, token_count=300) as d:  # about a minute
        key = await stack.key()
        node = await stack.add_node(d.url)
        await stack.wait_nodes_serving("qwen2.5:7b")
        r = await stack.submit(key, model="qwen2.5:7b", max_tokens=1000, max_wallclock_secs=1.5)
        assert r.status_code == 200, r.text
        job = await stack.wait_job(key, r.json()["id"], timeout=30)
        assert (job["status"], job["error"]) == ("failed", "timeout"), job
        assert "deadline" in job["error_message"]
        await d.wait_cancelled(1)  # the engine's stream was closed: generation stopped
        assert d.active_streams == 0 and not node.agent.jobs
        with psycopg.connect(database_url) as conn:
            kinds = [k for (k,) in conn.execute("SELECT kind FROM credit_ledger WHERE job_id = %s ORDER BY id",
                                                (job["id"],))]
        assert kinds == ["reserve", "refund"]

        # The node is free again and serves the next job in full.
        d.configure(delay_ms=0, token_count=4)
        nxt = await stack.wait_job(key, (await stack.submit(key, model="qwen2.5:7b")).json()["id"])
        assert nxt["status"] == "completed"


async def test_a_job_that_never_finds_capacity_fails_at_its_deadline(stack):
    async with OllamaDouble(models=["qwen2.5:7b"], stall_after=0) as d:
        key, busy = await stack.occupy_one_slot(d, "qwen2.5:7b")
        queued = (await stack.submit(key, model="qwen2.5:7b", max_wallclock_secs=1.0)).json()["id"]
        job = await stack.wait_job(key, queued, timeout=30)
        assert (job["status"], job["error"]) == ("failed", "no_capacity") and "deadline" in job["error_message"]
        d.release()
        d.configure(stall_after=None)
        assert (await stack.wait_job(key, busy))["status"] == "completed"
