"""model "auto" on the real stack: the decision on the job, x-model-used, key and request overrides."""

from __future__ import annotations

import psycopg

from tests.doubles.ollama_double import OllamaDouble

SMALL, LARGE = "qwen2.5:7b", "qwen2.5:72b"


async def test_auto_routes_by_task_and_records_the_decision(stack, database_url):
    async with OllamaDouble(models=[SMALL, LARGE, "nomic-embed-text:latest"]) as d:
        key = await stack.ready(d, LARGE, slots=4)

        r = await stack.submit(key, model="auto",
                               messages=[{"role": "user", "content": "Write a Python function to sort a list"}])
        assert r.status_code == 200, r.text
        assert r.headers["x-model-used"] == SMALL and "x-fallback-from" not in r.headers
        body = r.json()
        assert body["model"] == SMALL
        routing = body["routing"]
        assert (routing["object"], routing["task"], routing["complexity"], routing["model"]) == (
            "routing", "code_generation", "simple", SMALL)
        assert 0 < routing["confidence"] <= 1 and routing["routing_time_ms"] >= 0
        assert routing["optimize"] == "balanced"
        assert {c["model"] for c in routing["candidates"]} == {SMALL, LARGE}  # embeddings are not routed to
        job = await stack.wait_job(key, body["id"])
        assert job["status"] == "completed" and job["model"] == SMALL and job["routing"] == routing
        assert d.requests_to("/api/chat")[-1].body["model"] == SMALL

        # A hard analysis under quality goes to the large model; a per-request pool and task are honoured.
        r = await stack.submit(key, model="auto", routing={"optimize": "quality"}, messages=[
            {"role": "user", "content": "Assess the geopolitical implications of rising sea levels for trade, "
                                        "with detailed trade-offs and step by step reasoning."}])
        assert r.headers["x-model-used"] == LARGE and r.json()["routing"]["task"] == "analysis"
        r = await stack.submit(key, model="auto", routing={"model_pool": [SMALL], "optimize": "quality",
                                                           "task": "math"})
        assert r.json()["routing"] | {} and r.headers["x-model-used"] == SMALL
        assert (r.json()["routing"]["task"], r.json()["routing"]["task_source"]) == ("math", "request")

        # The key's pool and optimize mode apply when the request says nothing.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE api_keys SET model_pool = %s, optimize_mode = 'quality'", ([LARGE, SMALL],))
        stack.runtime.auth.invalidate()
        r = await stack.submit(key, model="auto", messages=[{"role": "user", "content": "hello"}])
        assert r.headers["x-model-used"] == LARGE and r.json()["routing"]["optimize"] == "quality"
        listed = (await stack.client.get("/api/v1/jobs", headers=stack.auth(key))).json()["jobs"]
        assert all("routing" in j for j in listed)

        # Admin-set prices drive the cost component: make the large model nearly free, then optimize for cost.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO model_prices (model, input_per_mtok, output_per_mtok) VALUES (%s, 1, 1)",
                         (LARGE,))
        await stack.runtime.gateway.prices.refresh()
        r = await stack.submit(key, model="auto", routing={"optimize": "cost"})
        assert r.headers["x-model-used"] == LARGE
        costs = {c["model"]: c["expected_cost"] for c in r.json()["routing"]["candidates"]}
        assert costs[LARGE] < costs[SMALL]


async def test_auto_errors_are_clear(stack, double):
    key = await stack.ready(double, "qwen2.5:7b")
    r = await stack.submit(key, model="auto", routing={"model_pool": ["gone:1b"]})
    assert (r.status_code, r.json()["error"]) == (404, "model_not_found") and "gone:1b" in r.json()["error_message"]
    r = await stack.submit(key, model="auto", routing={"optimize": "fastest"})
    assert (r.status_code, r.json()["error"]) == (400, "bad_request") and "optimize" in r.json()["error_message"]
    node_id = stack.nodes[0].node_id
    r = await stack.submit(key, model="auto", node_id=node_id)
    assert (r.status_code, r.json()["error"]) == (400, "bad_request") and "node_id" in r.json()["error_message"]
