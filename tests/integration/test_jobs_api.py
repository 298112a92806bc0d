"""The walking skeleton over real NATS and PostgreSQL: submit, place, run on a node, record, read back."""

from __future__ import annotations

import re

from tests.doubles.ollama_double import OllamaDouble
from tests.fixtures.waiting import wait_until

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def test_job_runs_on_a_node_and_its_result_is_recorded(stack, double):
    key = await stack.key("alice")
    node = await stack.add_node(double.url, name="n1")
    await stack.wait_nodes_serving("qwen2.5:7b")

    r = await stack.submit(key, model="qwen2.5:7b", messages=[{"role": "user", "content": "capital of France?"}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "status", "model", "created_at"}
    assert re.fullmatch(r"job_[0-9a-f]{16}", body["id"])
    assert body["status"] == "pending" and body["model"] == "qwen2.5:7b"
    assert ISO.match(body["created_at"])
    assert r.headers.get("x-request-id")

    job = await stack.wait_job(key, body["id"])
    assert job["status"] == "completed", job
    assert job["node_id"] == node.node_id
    assert job["result"]["content"]
    usage = job["result"]["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert ISO.match(job["completed_at"]) and job["latency_ms"] >= 0
    # The double received exactly the conversation and the defaults of the reference API.
    chat = double.requests_to("/api/chat")[-1].body
    assert chat["messages"] == [{"role": "user", "content": "capital of France?"}]
    assert chat["options"]["num_predict"] == 512 and chat["options"]["temperature"] == 0.7
    assert chat["options"]["top_p"] == 1.0


async def test_models_lists_what_online_nodes_serve(stack, double):
    key = await stack.key()
    await stack.add_node(double.url, name="n1")
    await stack.add_node(double.url, name="n2")
    await stack.wait_nodes_serving("llama3.2:3b", count=2)
    r = await stack.client.get("/api/v1/models", headers=stack.auth(key))
    assert r.status_code == 200
    models = {m["id"]: m for m in r.json()["models"]}
    assert set(models) == {"qwen2.5:7b", "llama3.2:3b"}
    assert models["llama3.2:3b"]["nodes"] == 2
    assert models["llama3.2:3b"]["avg_tokens_per_second"] is None  # nothing measured yet: unknown, not 0

    # After a job, tokens/sec comes from the engine's counters (eval_count / eval_duration).
    r = await stack.submit(key, model="llama3.2:3b")
    await stack.wait_job(key, r.json()["id"])

    async def measured():
        body = (await stack.client.get("/api/v1/models", headers=stack.auth(key))).json()
        m = {x["id"]: x for x in body["models"]}["llama3.2:3b"]
        return m["avg_tokens_per_second"]
    tps = await wait_until(measured, timeout=30, message="tokens/sec never advertised")
    assert tps == 100.0  # the double reports 10 ms per token


async def test_pinning_runs_the_job_on_the_pinned_node(stack, double):
    key = await stack.key()
    a = await stack.add_node(double.url, name="a")
    b = await stack.add_node(double.url, name="b")
    await stack.wait_nodes_serving("qwen2.5:7b", count=2)
    for node in (a, b, a, b):
        r = await stack.submit(key, model="qwen2.5:7b", node_id=node.node_id)
        job = await stack.wait_job(key, r.json()["id"])
        assert job["status"] == "completed" and job["node_id"] == node.node_id


async def test_errors_use_the_documented_codes(stack, double):
    key = await stack.key("alice")
    other = await stack.ready(double, "qwen2.5:7b", account="bob")

    r = await stack.submit(key, model="no-such-model:1b")
    assert (r.status_code, r.json()["error"]) == (404, "model_not_found")
    assert "no-such-model:1b" in r.json()["error_message"]

    r = await stack.client.post("/api/v1/jobs", json={"model": "qwen2.5:7b", "messages": []})
    assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
    r = await stack.client.get("/api/v1/jobs", headers={"Authorization": "Bearer inf_notakey"})
    assert (r.status_code, r.json()["error"]) == (401, "unauthorized")

    bad_bodies = {
        "messages": {"model": "qwen2.5:7b"},
        "model": {"messages": [{"role": "user", "content": "x"}]},
        "temperature": {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
        "max_tokens": {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        "top_p": {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "x"}], "top_p": "high"},
        "role": {"model": "qwen2.5:7b", "messages": [{"role": "wizard", "content": "x"}]},
    }
    for field, bad in bad_bodies.items():
        r = await stack.client.post("/api/v1/jobs", json=bad, headers=stack.auth(key))
        assert r.status_code == 400, (field, r.text)
        assert r.json()["error"] == "bad_request"
        assert field in r.json()["error_message"], (field, r.json())
    r = await stack.client.post("/api/v1/jobs", content=b"{not json", headers=stack.auth(key) | {"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")

    r = await stack.submit(key, model="qwen2.5:7b")
    job_id = r.json()["id"]
    assert (await stack.client.get(f"/api/v1/jobs/{job_id}", headers=stack.auth(other))).status_code == 404
    for missing in ("job_0000000000000000", "not-a-job", "job_" + "f" * 100):
        r = await stack.client.get(f"/api/v1/jobs/{missing}", headers=stack.auth(key))
        assert (r.status_code, r.json()["error"]) == (404, "not_found")

    for query in ("limit=0", "limit=101", "limit=abc", "status=done", "since=yesterday"):
        r = await stack.client.get(f"/api/v1/jobs?{query}", headers=stack.auth(key))
        assert (r.status_code, r.json()["error"]) == (400, "bad_request"), query


async def test_list_filters_and_isolation(stack, double):
    alice = await stack.key("alice")
    bob = await stack.ready(double, "qwen2.5:7b", account="bob", slots=4)
    ids = [(await stack.submit(alice, model="qwen2.5:7b")).json()["id"] for _ in range(3)]
    for job_id in ids:
        await stack.wait_job(alice, job_id)
    bob_job = (await stack.submit(bob, model="qwen2.5:7b")).json()["id"]

    listed = (await stack.client.get("/api/v1/jobs", headers=stack.auth(alice))).json()["jobs"]
    assert [j["id"] for j in listed] == list(reversed(ids))
    assert bob_job not in {j["id"] for j in listed}
    limited = (await stack.client.get("/api/v1/jobs?limit=2&status=completed", headers=stack.auth(alice))).json()
    assert len(limited["jobs"]) == 2 and all(j["status"] == "completed" for j in limited["jobs"])
    none_failed = (await stack.client.get("/api/v1/jobs?status=failed", headers=stack.auth(alice))).json()
    assert none_failed["jobs"] == []
    future = (await stack.client.get("/api/v1/jobs?since=2999-01-01T00:00:00Z", headers=stack.auth(alice))).json()
    assert future["jobs"] == []


async def test_engine_error_mid_job_fails_the_job_clearly(stack):
    async with OllamaDouble(models=["qwen2.5:7b"], error_after=3, error_message="CUDA error: out of memory") as d:
        key = await stack.ready(d, "qwen2.5:7b")
        r = await stack.submit(key, model="qwen2.5:7b")
        job = await stack.wait_job(key, r.json()["id"])
    assert job["status"] == "failed"
    assert job["error"] == "engine_error"
    assert "out of memory" in job["error_message"]


async def test_busy_nodes_queue_jobs_until_a_slot_frees(stack):
    async with OllamaDouble(models=["qwen2.5:7b"], stall_after=1) as d:
        key, first = await stack.occupy_one_slot(d, "qwen2.5:7b")
        second = (await stack.submit(key, model="qwen2.5:7b")).json()["id"]
        # The node is full: the second job waits in pending rather than failing.
        r = await stack.client.get(f"/api/v1/jobs/{second}", headers=stack.auth(key))
        assert r.json()["status"] == "pending"
        d.configure(stall_after=None)
        d.release()
        assert (await stack.wait_job(key, first))["status"] == "completed"
        assert (await stack.wait_job(key, second))["status"] == "completed"


async def test_a_job_that_cannot_be_placed_before_its_deadline_fails_with_no_capacity(stack):
    async with OllamaDouble(models=["qwen2.5:7b"], stall_after=1) as d:
        key, _ = await stack.occupy_one_slot(d, "qwen2.5:7b")
        r = await stack.submit(key, model="qwen2.5:7b", max_wallclock_secs=1)
        job = await stack.wait_job(key, r.json()["id"])
        d.release()
    assert job["status"] == "failed" and job["error"] == "no_capacity"
    assert "qwen2.5:7b" in job["error_message"]


async def test_health_endpoints_need_no_key(stack):
    assert (await stack.client.get("/healthz")).json() == {"status": "ok"}
    r = await stack.client.get("/readyz")
    assert r.status_code == 200 and r.json()["postgres"] == "ok" and r.json()["nats"] == "ok"


async def test_openapi_document_describes_the_api(stack):
    r = await stack.client.get("/docs/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    paths = doc["paths"]
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/models", "/api/v1/nodes", "/healthz", "/readyz"):
        assert path in paths, sorted(paths)
    body = paths["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]] if "$ref" in body else body
    assert {"model", "messages"} <= set(schema["required"])
    assert {"max_tokens", "temperature", "top_p", "node_id", "stream"} <= set(schema["properties"])


async def test_nul_characters_are_a_bad_request_not_a_crash(stack, double):
    key = await stack.ready(double, "qwen2.5:7b")
    r = await stack.submit(key, model="qwen2.5:7b", messages=[{"role": "user", "content": "a\u0000b"}])
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")
    assert "content" in r.json()["error_message"]
