"""Queued jobs start in the order they were submitted (FIFO) when the one busy node frees its slot."""

from __future__ import annotations

from tests.doubles.ollama_double import OllamaDouble

MODEL = "qwen2.5:7b"


async def test_jobs_queued_for_a_busy_node_start_in_submission_order(stack):
    async with OllamaDouble(models=[MODEL], stall_after=0) as d:
        key, first = await stack.occupy_one_slot(d, MODEL, messages=[{"role": "user", "content": "job-0"}])
        queued = []
        for i in range(1, 6):
            r = await stack.submit(key, model=MODEL, messages=[{"role": "user", "content": f"job-{i}"}])
            assert r.status_code == 200 and r.json()["status"] == "pending", r.text
            queued.append(r.json()["id"])
        d.configure(stall_after=None)
        d.release()
        jobs = [await stack.wait_job(key, j) for j in [first, *queued]]
    assert all(j["status"] == "completed" for j in jobs), jobs
    started = [r.body["messages"][-1]["content"] for r in d.requests_to("/api/chat")]
    assert started == [f"job-{i}" for i in range(6)]
    assert [j["started_at"] for j in jobs] == sorted(j["started_at"] for j in jobs)

