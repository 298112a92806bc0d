"""The whole path with real processes: control plane and two node agents via their CLIs, an Ollama double process."""

from __future__ import annotations

import re

import httpx

from tests.e2e.cluster import auth, node_id_of, wait_job, wait_model, wait_warm

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def test_jobs_end_to_end_over_real_processes(cluster):
    _, engine = cluster.start_double()
    alice = cluster.key("alice")
    bob = cluster.key("bob")
    assert re.fullmatch(r"inf_[A-Za-z0-9]{40}", alice)
    tokens = [cluster.register_node("gpu-a"), cluster.register_node("gpu-b")]
    _, url = cluster.start_control_plane()
    for i, token in enumerate(tokens):
        cluster.start_node(token, engine, name=f"node{i}")

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).json()["status"] == "ok"
        await wait_warm(client)
        await wait_model(client, alice, "qwen2.5:7b", nodes=2)

        r = await client.post("/api/v1/jobs", headers=auth(alice), json={
            "model": "qwen2.5:7b", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 64, "temperature": 0.2, "top_p": 0.9})
        assert r.status_code == 200, r.text
        submitted = r.json()
        assert submitted["status"] == "pending" and ISO.match(submitted["created_at"])
        job = await wait_job(client, alice, submitted["id"])
        assert job["status"] == "completed", job
        assert job["id"] == submitted["id"] and job["model"] == "qwen2.5:7b"
        assert job["node_id"] in {node_id_of(t) for t in tokens}
        assert job["result"]["content"]
        usage = job["result"]["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        assert ISO.match(job["completed_at"]) and isinstance(job["latency_ms"], int)

        for token in tokens:  # pin to each node
            node_id = node_id_of(token)
            r = await client.post("/api/v1/jobs", headers=auth(alice), json={
                "model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}], "node_id": node_id})
            job = await wait_job(client, alice, r.json()["id"])
            assert (job["status"], job["node_id"]) == ("completed", node_id)

        r = await client.post("/api/v1/jobs", headers=auth(alice), json={
            "model": "mistral:7b", "messages": [{"role": "user", "content": "hi"}]})
        assert (r.status_code, r.json()["error"]) == (404, "model_not_found")
        r = await client.post("/api/v1/jobs", headers=auth(alice), json={"model": "qwen2.5:7b", "messages": "hi"})
        assert (r.status_code, r.json()["error"]) == (400, "bad_request")
        assert "messages" in r.json()["error_message"]
        r = await client.post("/api/v1/jobs", json={"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "x"}]})
        assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
        r = await client.get(f"/api/v1/jobs/{submitted['id']}", headers=auth(bob))
        assert r.status_code == 404
        listed = (await client.get("/api/v1/jobs?limit=100", headers=auth(alice))).json()["jobs"]
        assert len(listed) == 3 and all(j["status"] == "completed" for j in listed)
        assert (await client.get("/api/v1/jobs", headers=auth(bob))).json()["jobs"] == []
