"""Cancel, drain, the network view, model health, and an engine that goes away and comes back."""

from __future__ import annotations

import httpx

from tests.fixtures.ports import free_port
from tests.harness import Stack
from tests.doubles.ollama_double import OllamaDouble
from tests.fixtures.waiting import wait_until


async def test_cancel_a_running_job_stops_the_engine_and_keeps_partial_output(stack):
    async with OllamaDouble(models=["qwen2.5:7b"], stall_after=2) as d:
        key = await stack.key()
        node = await stack.add_node(d.url)
        await stack.wait_nodes_serving("qwen2.5:7b")
        job_id = (await stack.submit(key, model="qwen2.5:7b")).json()["id"]
        await stack.wait_job(key, job_id, statuses=("processing",))
        # Wait until the node has relayed the tokens generated before the engine stalled.
        await wait_until(lambda: job_id in node.agent.jobs and node.agent.jobs[job_id].chunks > 0, timeout=30,
                         message="the node never produced the first tokens")

        r = await stack.client.delete(f"/api/v1/jobs/{job_id}", headers=stack.auth(key))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled"
        await d.wait_cancelled(1)  # the engine saw its stream closed

        async def partial_kept():
            body = (await stack.client.get(f"/api/v1/jobs/{job_id}", headers=stack.auth(key))).json()
            return body if body.get("result", {}).get("content") else None
        job = await wait_until(partial_kept, timeout=30, message="partial output never recorded")
        assert job["status"] == "cancelled" and job["error"] == "cancelled"

        # Cancelling again (or a finished job) is a clear conflict, not a silent success.
        r = await stack.client.delete(f"/api/v1/jobs/{job_id}", headers=stack.auth(key))
        assert (r.status_code, r.json()["error"]) == (409, "conflict")
        assert "cancelled" in r.json()["error_message"]
        other = await stack.key("mallory")
        r = await stack.client.delete(f"/api/v1/jobs/{job_id}", headers=stack.auth(other))
        assert r.status_code == 404
        # The node is free again: the next job completes.
        d.configure(stall_after=None)
        nxt = (await stack.submit(key, model="qwen2.5:7b")).json()["id"]
        assert (await stack.wait_job(key, nxt))["status"] == "completed"


async def test_cancel_a_pending_job_means_it_never_runs(stack):
    async with OllamaDouble(models=["qwen2.5:7b"], stall_after=1) as d:
        key, first = await stack.occupy_one_slot(d, "qwen2.5:7b")
        queued = (await stack.submit(key, model="qwen2.5:7b")).json()["id"]
        r = await stack.client.delete(f"/api/v1/jobs/{queued}", headers=stack.auth(key))
        assert r.json()["status"] == "cancelled"
        d.configure(stall_after=None)
        d.release()
        assert (await stack.wait_job(key, first))["status"] == "completed"
        third = (await stack.submit(key, model="qwen2.5:7b")).json()["id"]
        assert (await stack.wait_job(key, third))["status"] == "completed"
        assert (await stack.wait_job(key, queued))["status"] == "cancelled"
        assert len(d.requests_to("/api/chat")) == 2  # the cancelled job never reached the engine


async def test_nodes_list_shows_the_network_without_secrets(stack, double):
    key = await stack.key()
    node = await stack.add_node(double.url, name="gpu-box-7", slots=2)
    await stack.wait_nodes_serving("qwen2.5:7b")
    r = await stack.client.get("/api/v1/nodes", headers=stack.auth(key))
    assert r.status_code == 200
    [entry] = [n for n in r.json()["nodes"] if n["id"] == node.node_id]
    assert entry["name"] == "gpu-box-7" and entry["state"] == "online" and entry["slots"] == 2
    assert {m["id"] for m in entry["models"]} == {"qwen2.5:7b", "llama3.2:3b"}
    assert entry["last_seen"].endswith("Z")
    assert "infnode_" not in r.text and '"token"' not in r.text
    assert (await stack.client.get("/api/v1/nodes")).status_code == 401


async def test_model_health(stack):
    async with OllamaDouble(models=["qwen2.5:7b", "llama3.2:3b"], loaded=["qwen2.5:7b"], load_on_use=False) as d:
        key = await stack.ready(d, "qwen2.5:7b")

        async def health(model):
            r = await stack.client.get(f"/api/v1/models/{model}/health", headers=stack.auth(key))
            assert r.status_code == 200, r.text
            return r.json()
        assert await health("qwen2.5:7b") == {"model": "qwen2.5:7b", "status": "ready"}
        assert (await health("llama3.2:3b"))["status"] == "loading"
        assert (await health("nope:1b"))["status"] == "unavailable"


async def test_admin_drain_over_the_api(stack, double):
    admin = await stack.key("ops", admin=True)
    user = await stack.key("alice")
    # Advertising every 3 s, the stopped node stays live (draining) for 9 s: time enough to see the 503.
    node = await stack.add_node(double.url, interval=3.0)
    await stack.wait_nodes_serving("qwen2.5:7b")
    r = await stack.client.post(f"/api/v1/nodes/{node.node_id}/drain", headers=stack.auth(user))
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    r = await stack.client.post(f"/api/v1/nodes/{node.node_id}/drain", headers=stack.auth(admin))
    assert r.status_code == 202 and r.json() == {"node_id": node.node_id, "state": "draining"}
    # While the node is alive but draining, the model exists and nobody takes it: 503 no_capacity.
    assert stack.runtime.registry.get(node.node_id).state == "draining"
    assert not stack.runtime.registry.accepting("qwen2.5:7b") and stack.runtime.registry.has_model("qwen2.5:7b")
    r = await stack.submit(user, model="qwen2.5:7b")
    assert (r.status_code, r.json()["error"]) == (503, "no_capacity"), r.text
    # An idle node that drains finishes at once and stops; once it is offline nothing serves the model: 404.
    await wait_until(lambda: node.task.done(), timeout=30, message="drained node never stopped")
    await wait_until(lambda: not stack.runtime.registry.has_model("qwen2.5:7b"), timeout=30,
                     message="the stopped node never went offline")
    r = await stack.submit(user, model="qwen2.5:7b")
    assert (r.status_code, r.json()["error"]) == (404, "model_not_found"), r.text


async def test_engine_going_away_withdraws_its_models_and_they_return(stack):
    async with OllamaDouble(models=["qwen2.5:7b"]) as d:
        key = await stack.key()
        node = await stack.add_node(d.url, interval=0.3)
        await stack.wait_nodes_serving("qwen2.5:7b")
        await d.stop()
        await wait_until(lambda: not stack.runtime.registry.has_model("qwen2.5:7b"), timeout=30,
                         message="models of a node whose engine stopped stayed advertised")
        r = await stack.submit(key, model="qwen2.5:7b")
        assert (r.status_code, r.json()["error"]) == (404, "model_not_found")
        await d.start()
        await stack.wait_nodes_serving("qwen2.5:7b")
        job_id = (await stack.submit(key, model="qwen2.5:7b")).json()["id"]
        job = await stack.wait_job(key, job_id)
        assert job["status"] == "completed" and job["node_id"] == node.node_id


async def test_an_attempt_recorded_but_never_offered_is_replaced(stack, double):
    """A replica that dies between recording an attempt and offering it leaves a job 'processing' on a live node
    that never heard of it; the node's running reports reveal it and the job runs elsewhere (or there again)."""
    from control_plane.store.database import jsonb

    key = await stack.key()
    node = await stack.add_node(double.url, interval=0.3)
    await stack.wait_nodes_serving("qwen2.5:7b")
    acct = await stack.runtime.db.fetchone("get_account_by_name", {"name": "alice"})
    row = await stack.runtime.db.fetchone("insert_job", {
        "id": "job_00000000deadbeef", "account_id": acct["id"], "api_key_id": None, "kind": "chat",
        "model": "qwen2.5:7b", "request": jsonb({"messages": [{"role": "user", "content": "hi"}], "params": {}}),
        "pinned_node_id": None, "claimed_by": "a-replica-that-died", "claim_secs": 60, "wallclock_secs": 120,
        "request_id": None})
    assert await stack.runtime.db.execute("start_attempt", {
        "id": row["id"], "attempt": 1, "lease": "never-offered", "node_id": node.node_id})
    job = await stack.wait_job(key, row["id"], timeout=60)
    assert job["status"] == "completed" and job["attempt"] == 2


async def test_metrics_count_jobs_and_offers(nats_url, database_url, double):
    port = free_port()
    stack = await Stack(nats_url, database_url, {"metrics_port": port}).start()
    try:
        key = await stack.key()
        admin = await stack.key("ops", admin=True)
        await stack.add_node(double.url)
        await stack.wait_nodes_serving("qwen2.5:7b")
        await stack.wait_job(key, (await stack.submit(key, model="qwen2.5:7b")).json()["id"])
        # The public port answers /metrics to admin keys only...
        assert (await stack.client.get("/metrics")).status_code == 401
        r = await stack.client.get("/metrics", headers=stack.auth(key))
        assert (r.status_code, r.json()["error"]) == (403, "forbidden")
        public = await stack.client.get("/metrics", headers=stack.auth(admin))
        # ...the internal listener to anyone who can reach it (a private interface).
        async with httpx.AsyncClient() as client:
            internal = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert (await client.get(f"http://127.0.0.1:{port}/api/v1/jobs")).status_code == 404
    finally:
        await stack.stop()
    for r in (public, internal):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert 'infernet_jobs_submitted_total{kind="chat"} 1.0' in text
        assert 'infernet_assignment_offers_total{answer="accepted"} 1.0' in text
        assert "infernet_nodes_online 1.0" in text


async def test_a_node_that_never_answers_offers_is_skipped(stack, nats_url):
    """A node advertises the best score but never answers: each offer times out and goes to the next node."""
    import asyncio

    import nats

    import protocol
    from control_plane.nodes.service import register_node
    from protocol import subjects
    from tests.fixtures.nats import public

    async with OllamaDouble(models=["qwen2.5:7b"], loaded=[], load_on_use=False) as d:
        key = await stack.key()
        real = await stack.add_node(d.url)
        zombie = await register_node(stack.runtime.db, "zombie", models=("*",))
        # A registered node (its own bus identity) that receives its offers (so they are not "no responders")
        # and never answers them.
        nc = await nats.connect(public(nats_url), token=zombie.token,
                                inbox_prefix=subjects.node_inbox_prefix(zombie.node_id))

        async def never_answer(msg) -> None:
            return None
        await nc.subscribe(subjects.node_assign(zombie.node_id), cb=never_answer)
        await nc.flush()
        ad = protocol.Advertisement(
            node_id=zombie.node_id, agent_version="0", engine="ollama", state="online",
            slots=8, active_jobs=0, interval_s=0.3, boot_id="z",
            models=(protocol.ModelInfo("qwen2.5:7b", loaded=True, tokens_per_second=500.0),))

        async def advertise():
            while True:
                await nc.publish(subjects.node_advertise(zombie.node_id), protocol.encode(ad))
                await asyncio.sleep(0.3)
        ticker = asyncio.create_task(advertise())
        try:
            await stack.wait_nodes_serving("qwen2.5:7b", count=2)
            ids = [(await stack.submit(key, model="qwen2.5:7b")).json()["id"] for _ in range(3)]
            jobs = [await stack.wait_job(key, j, timeout=60) for j in ids]
        finally:
            ticker.cancel()
            await nc.close()
    assert all(j["status"] == "completed" and j["node_id"] == real.node_id for j in jobs), jobs
    admin = stack.auth(await stack.key("ops", admin=True))
    assert 'infernet_assignment_offers_total{answer="unanswered"}' in (await stack.client.get("/metrics", headers=admin)).text


async def test_operators_see_what_their_own_nodes_served_and_earned(stack, double):
    operator = await stack.key("acme-gpus")
    user = await stack.key("alice")
    node = await stack.add_node(double.url, name="acme-1", operator="acme-gpus")
    await stack.wait_nodes_serving("qwen2.5:7b")
    job = await stack.wait_job(user, (await stack.submit(user, model="qwen2.5:7b")).json()["id"])

    async def entry(key):
        body = (await stack.client.get("/api/v1/nodes", headers=stack.auth(key))).json()
        return next(n for n in body["nodes"] if n["id"] == node.node_id)
    mine = await entry(operator)
    assert mine["operator"]["jobs_served"] == 1
    assert mine["operator"]["completion_tokens"] == job["result"]["usage"]["completion_tokens"]
    assert 0 < mine["operator"]["earnings"] <= mine["operator"]["credits_charged"] == job["credits_charged"]
    assert "operator" not in await entry(user)  # other callers never see an operator's figures
