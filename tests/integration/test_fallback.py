"""Fallback: a model with no capacity, or whose only node fails before any token, is served by the next model."""

from __future__ import annotations

import pytest

from tests.doubles.ollama_double import OllamaDouble
from tests.harness import Stack

BIG, SMALL = "qwen2.5:72b", "qwen2.5:7b"


def fallback_headers(r) -> tuple:
    return r.headers.get("x-model-used"), r.headers.get("x-fallback-from"), r.headers.get("x-fallback-depth")


async def test_at_submission_a_missing_or_full_model_falls_back(stack):
    async with OllamaDouble(models=[BIG], stall_after=0) as big, OllamaDouble(models=[SMALL]) as small:
        key = await stack.ready(small, SMALL, name="small")

        # No node has the model at all.
        r = await stack.submit(key, model=BIG, fallback_models=[SMALL])
        assert r.status_code == 200, r.text
        assert fallback_headers(r) == (SMALL, BIG, "1")
        assert (r.json()["model"], r.json()["fallback_from"], r.json()["fallback_depth"]) == (SMALL, BIG, 1)
        job = await stack.wait_job(key, r.json()["id"])
        assert job["status"] == "completed" and job["model"] == SMALL and job["fallback_from"] == BIG
        got = await stack.client.get(f"/api/v1/jobs/{job['id']}", headers=stack.auth(key))
        assert fallback_headers(got) == (SMALL, BIG, "1")

        # The model exists but its only node is busy: the fallback with a free node serves it now.
        await stack.add_node(big.url, name="big", slots=1)
        await stack.wait_nodes_serving(BIG)
        busy = (await stack.submit(key, model=BIG)).json()["id"]
        await big.wait_active(1)
        r = await stack.submit(key, model=BIG, fallback_models=[SMALL])
        assert fallback_headers(r) == (SMALL, BIG, "1")
        # Without a fallback it waits for the busy node; with the model itself free there is no fallback.
        r = await stack.submit(key, model=SMALL, fallback_models=[BIG])
        assert fallback_headers(r) == (SMALL, None, None) and "fallback_from" not in r.json()
        big.release()
        big.configure(stall_after=None)
        assert (await stack.wait_job(key, busy))["status"] == "completed"

        # Nothing in the chain can serve: the original model's error.
        r = await stack.submit(key, model="nope:1b", fallback_models=["gone:1b"])
        assert (r.status_code, r.json()["error"]) == (404, "model_not_found")


@pytest.mark.parametrize("failure", ["node_stopped", "engine_died"])
async def test_a_model_whose_only_node_fails_before_any_token_falls_back(stack, failure):
    async with OllamaDouble(models=[BIG], stall_after=0) as big, OllamaDouble(models=[SMALL]) as small:
        key = await stack.key()
        big_node = await stack.add_node(big.url, name="big")
        await stack.add_node(small.url, name="small")
        await stack.wait_nodes_serving(BIG)
        await stack.wait_nodes_serving(SMALL)
        r = await stack.submit(key, model=BIG, fallback_models=[SMALL])
        assert fallback_headers(r) == (BIG, None, None)
        job_id = r.json()["id"]
        await big.wait_active(1)  # running on the big model's node, no token yet
        if failure == "node_stopped":
            await stack.stop_node(big_node)
        else:
            await big.stop()
        job = await stack.wait_job(key, job_id)
        assert job["status"] == "completed", job
        assert (job["model"], job["fallback_from"], job["fallback_depth"]) == (SMALL, BIG, 1)
        assert job["attempt"] == 2
        assert small.requests_to("/api/chat")[-1].body["model"] == SMALL
        got = await stack.client.get(f"/api/v1/jobs/{job_id}", headers=stack.auth(key))
        assert fallback_headers(got) == (SMALL, BIG, "1")


async def test_configured_chains_and_auto_pools_fall_back(nats_url, database_url):
    s = await Stack(nats_url, database_url, {"fallback_chains": f"huge:405b>{BIG}>{SMALL}"}).start()
    try:
        async with OllamaDouble(models=[SMALL]) as small:
            key = await s.ready(small, SMALL)
            r = await s.submit(key, model="huge:405b")
            assert fallback_headers(r) == (SMALL, "huge:405b", "2")
            assert (await s.wait_job(key, r.json()["id"]))["status"] == "completed"

            # model "auto": the routing decision picks the best model of the pool (quality: the 72b); its only
            # node fails before any token, so the next-best model of the same decision serves the job.
            async with OllamaDouble(models=[BIG], stall_after=0) as big:
                big_node = await s.add_node(big.url, name="big")
                await s.wait_nodes_serving(BIG)
                r = await s.submit(key, model="auto", routing={"model_pool": [BIG, SMALL], "optimize": "quality"})
                assert r.status_code == 200, r.text
                assert fallback_headers(r)[0] == BIG, r.headers  # chosen first, no fallback yet
                await big.wait_active(1)
                await s.stop_node(big_node)
                job = await s.wait_job(key, r.json()["id"])
            assert job["status"] == "completed", job
            assert (job["model"], job["fallback_from"], job["fallback_depth"]) == (SMALL, BIG, 1)
            assert small.requests_to("/api/chat")[-1].body["model"] == SMALL
    finally:
        await s.stop()
