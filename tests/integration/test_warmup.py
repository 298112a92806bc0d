"""Warm-up after a control plane starts (warmup_s > 0): /readyz says `registry: warming`, a model no node has
advertised yet is queued rather than refused and runs once a node advertises it; after warm-up the same request
is 404 at once. /readyz answers 503 when PostgreSQL is unreachable."""

from __future__ import annotations

from tests.fixtures.waiting import wait_until
from tests.harness import Stack

MODEL = "qwen2.5:7b"


async def test_warm_up_queues_unknown_models_then_refuses_them(nats_url, database_url, double):
    s = await Stack(nats_url, database_url, {"warmup_s": 8.0}).start()
    try:
        key = await s.key()
        r = await s.client.get("/readyz")
        assert r.status_code == 200 and r.json()["registry"] == "warming", r.text
        # No node has advertised anything yet: queued, not model_not_found.
        r = await s.submit(key, model=MODEL)
        assert r.status_code == 200 and r.json()["status"] == "pending", r.text
        job_id = r.json()["id"]
        await s.add_node(double.url)
        assert (await s.wait_job(key, job_id))["status"] == "completed"

        async def warm():
            return (await s.client.get("/readyz")).json()["registry"] == "warm"
        await wait_until(warm, timeout=60, message="the registry never became warm")
        r = await s.submit(key, model="nobody-has:1b")
        assert (r.status_code, r.json()["error"]) == (404, "model_not_found"), r.text

        # PostgreSQL unreachable: not ready.
        await s.runtime.db.close()
        r = await s.client.get("/readyz")
        assert r.status_code == 503 and r.json()["postgres"] == "unreachable" and r.json()["status"] == "unavailable"
    finally:
        await s.stop()


async def test_during_warm_up_an_unknown_model_is_queued_until_its_deadline(nats_url, database_url):
    s = await Stack(nats_url, database_url, {"warmup_s": 60.0}).start()
    try:
        key = await s.key()
        r = await s.submit(key, model="nobody-has:1b", max_wallclock_secs=2.0)
        assert r.status_code == 200 and r.json()["status"] == "pending", r.text
        job = await s.wait_job(key, r.json()["id"])
        assert (job["status"], job["error"]) == ("failed", "no_capacity"), job  # the documented end of a wait
    finally:
        await s.stop()
