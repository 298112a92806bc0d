"""Usage, transactions and operator earnings read back from the real stack, token for token."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

from control_plane.credits import pricing
from control_plane.credits.pricing import Price
from node_agent.agent import NodeAgent
from node_agent.engines.registry import create_engine
from node_agent.settings import NodeSettings
from tests.doubles.ollama_double import OllamaDouble
from tests.harness import RunningNode


async def get_all(stack, key, path: str, field: str, **params) -> list[dict]:
    """Every page of a cursor-paginated list."""
    items, cursor = [], None
    while True:
        query = dict(params, limit=params.get("limit", 3)) | ({"cursor": cursor} if cursor else {})
        r = await stack.client.get(path, headers=stack.auth(key), params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body[field]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def test_usage_and_transactions_match_the_jobs_that_ran(stack):
    async with OllamaDouble(models=["qwen2.5:7b", "llama3.2:3b"], token_count=40) as good, \
            OllamaDouble(models=["broken:1b"], error_after=1) as bad:
        key = await stack.key("pat")
        other_key = (await stack.client.post("/api/v1/keys", headers=stack.auth(key), json={"name": "2nd"})).json()
        await stack.add_node(good.url, slots=4)
        await stack.add_node(bad.url)
        for model in ("qwen2.5:7b", "llama3.2:3b", "broken:1b"):
            await stack.wait_nodes_serving(model)
        start = (await stack.client.get("/api/v1/credits", headers=stack.auth(key))).json()
        submitted = []
        plan = [("qwen2.5:7b", 5, key), ("qwen2.5:7b", 100, key), ("llama3.2:3b", 12, other_key["key"]),
                ("llama3.2:3b", 1, key), ("broken:1b", 50, key), ("qwen2.5:7b", 33, other_key["key"])]
        for i, (model, max_tokens, k) in enumerate(plan):
            r = await stack.submit(k, model=model, max_tokens=max_tokens,
                                   messages=[{"role": "user", "content": f"question number {i} " * (i + 1)}])
            assert r.status_code == 200, r.text
            submitted.append(r.json()["id"])
        jobs = {j: await stack.wait_job(key, j) for j in submitted}
    bob = await stack.key("bob")
    await stack.submit(bob, model="qwen2.5:7b")  # another account's job never shows up below

    price = Price(stack.settings.default_price_input, stack.settings.default_price_output)
    usage = await get_all(stack, key, "/api/v1/usage", "usage")
    assert [u["job_id"] for u in usage] == list(reversed(submitted))  # newest first, across pages
    for u in usage:
        job = jobs[u["job_id"]]
        tokens = (job.get("result") or {}).get("usage") or {}
        assert u["model"] == job["model"] and u["status"] == job["status"] and u["node_id"] == job["node_id"]
        if job["status"] == "completed":
            assert u["prompt_tokens"] == tokens["prompt_tokens"]
            assert u["completion_tokens"] == tokens["completion_tokens"]
            assert u["credits"] == job["credits_charged"] == pricing.cost(u["prompt_tokens"], u["completion_tokens"],
                                                                          price)
        else:
            assert u["error"] == "engine_error" and u["credits"] == 0
        assert u["latency_ms"] == job["latency_ms"] and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert [jobs[j]["result"]["usage"]["completion_tokens"] for j in submitted[:4]] == [5, 40, 12, 1]

    body = (await stack.client.get("/api/v1/usage", headers=stack.auth(key))).json()
    overall = body["totals"]["overall"]
    assert overall == {"jobs": 6, "prompt_tokens": sum(u["prompt_tokens"] for u in usage),
                       "completion_tokens": sum(u["completion_tokens"] for u in usage),
                       "credits": sum(u["credits"] for u in usage)}
    fields = ("jobs", "prompt_tokens", "completion_tokens", "credits")
    per_model = defaultdict(lambda: dict.fromkeys(fields, 0))
    for u in usage:
        totals = per_model[u["model"]]
        totals["jobs"] += 1
        for f in fields[1:]:
            totals[f] += u[f]
    assert {m["model"]: {f: m[f] for f in fields} for m in body["totals"]["by_model"]} == per_model
    today = datetime.now(timezone.utc).date().isoformat()
    assert [d["day"] for d in body["totals"]["by_day"]] in ([today], [today, (datetime.now(timezone.utc).date()
                                                                             - timedelta(days=1)).isoformat()])

    # Filters: model, key, time.
    by_model = (await stack.client.get("/api/v1/usage?model=llama3.2:3b", headers=stack.auth(key))).json()
    assert {u["job_id"] for u in by_model["usage"]} == {submitted[2], submitted[3]}
    assert by_model["totals"]["overall"]["jobs"] == 2
    by_key = (await stack.client.get(f"/api/v1/usage?key_id={other_key['id']}", headers=stack.auth(key))).json()
    assert {u["job_id"] for u in by_key["usage"]} == {submitted[2], submitted[5]}
    assert all(u["key_id"] == other_key["id"] for u in by_key["usage"])
    later = (datetime.now(timezone.utc) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await stack.client.get(f"/api/v1/usage?since={later}", headers=stack.auth(key))).json()["usage"] == []
    assert len((await stack.client.get(f"/api/v1/usage?until={later}", headers=stack.auth(key))).json()["usage"]) == 6

    all_keys = (await stack.client.get("/api/v1/keys", headers=stack.auth(key))).json()["keys"]
    first_key_id = next(k["id"] for k in all_keys if k["id"] != other_key["id"])
    # Transactions: every job's reserve, then charge + release or a refund; the ledger sums to the balance.
    txs = await get_all(stack, key, "/api/v1/credits/transactions", "transactions")
    assert [int(t["id"]) for t in txs] == sorted((int(t["id"]) for t in txs), reverse=True)
    now = (await stack.client.get("/api/v1/credits", headers=stack.auth(key))).json()
    assert sum(t["amount"] for t in txs) == now["balance"] == start["balance"] - overall["credits"]
    assert sum(t["held"] for t in txs) == now["reserved"] == 0
    per_job = defaultdict(list)
    for t in txs:
        if t["job_id"]:
            per_job[t["job_id"]].append(t)
    assert set(per_job) == set(submitted)
    for job_id, entries in per_job.items():
        kinds = sorted(t["kind"] for t in entries)
        job = jobs[job_id]
        if job["status"] == "completed":
            assert kinds == ["charge", "release", "reserve"]
            assert -next(t["amount"] for t in entries if t["kind"] == "charge") == job["credits_charged"]
        else:
            assert kinds == ["refund", "reserve"]
        assert sum(t["held"] for t in entries) == 0
        submitted_with = plan[submitted.index(job_id)][2]
        assert {t["key_id"] for t in entries} == {other_key["id"] if submitted_with != key else first_key_id}
    charges = (await stack.client.get("/api/v1/credits/transactions?kind=charge,refund&limit=100",
                                      headers=stack.auth(key))).json()["transactions"]
    assert Counter(t["kind"] for t in charges) == Counter(charge=5, refund=1)
    one = txs[0]
    assert (await stack.client.get(f"/api/v1/credits/transactions/{one['id']}", headers=stack.auth(key))).json() == one
    # Another account sees none of it.
    r = await stack.client.get(f"/api/v1/credits/transactions/{one['id']}", headers=stack.auth(bob))
    assert r.status_code == 404
    bobs = (await stack.client.get("/api/v1/usage", headers=stack.auth(bob))).json()["usage"]
    assert not {u["job_id"] for u in bobs} & set(submitted)
    for bad in ("kind=gift", "limit=0", "limit=101", "cursor=abc", "since=yesterday"):
        r = await stack.client.get(f"/api/v1/credits/transactions?{bad}", headers=stack.auth(key))
        assert (r.status_code, r.json()["error"]) == (400, "bad_request"), bad
    for bad in ("cursor=job_nope", "until=tomorrow", "limit=500"):
        r = await stack.client.get(f"/api/v1/usage?{bad}", headers=stack.auth(key))
        assert (r.status_code, r.json()["error"]) == (400, "bad_request"), bad


async def test_operator_payout_matches_the_charged_jobs_its_nodes_served(stack):
    admin = stack.auth(await stack.key("root", admin=True))
    operator = (await stack.client.post("/api/v1/admin/accounts", headers=admin,
                                        json={"name": "gpu-operator", "credits": 0})).json()
    op = stack.auth(operator["key"]["key"])
    customer = await stack.key("quinn")
    async with OllamaDouble(models=["qwen2.5:7b"], token_count=25) as d:
        nodes = []
        for name in ("op-a", "op-b"):
            reg = (await stack.client.post("/api/v1/admin/nodes", headers=admin,
                                           json={"name": name, "operator": "gpu-operator", "models": ["*"]})).json()
            nodes.append(start_agent(stack, d.url, reg["node_id"], reg["token"], name))
        unowned = await stack.add_node(d.url, name="someone-else")
        await stack.wait_nodes_serving("qwen2.5:7b", count=3)
        targets = [nodes[0].node_id, nodes[1].node_id, unowned.node_id]
        ids = [(await stack.submit(customer, model="qwen2.5:7b", max_tokens=5 + i, node_id=targets[i % 3])).json()["id"]
               for i in range(12)]
        jobs = [await stack.wait_job(customer, j) for j in ids]
    assert all(j["status"] == "completed" for j in jobs)
    served = [j for j in jobs if j["node_id"] in targets[:2]]
    assert len(served) == 8
    share = stack.settings.operator_share_bps
    earnings = (await stack.client.get("/api/v1/credits/earnings", headers=op)).json()
    assert earnings["jobs_served"] == len(served)
    assert earnings["earnings"] == sum(pricing.payout(j["credits_charged"], share) for j in served)
    for n in earnings["nodes"]:
        on_node = [j for j in served if j["node_id"] == n["node_id"]]
        assert n["jobs_served"] == len(on_node)
        assert n["prompt_tokens"] == sum(j["result"]["usage"]["prompt_tokens"] for j in on_node)
        assert n["completion_tokens"] == sum(j["result"]["usage"]["completion_tokens"] for j in on_node)
        assert n["credits_charged"] == sum(j["credits_charged"] for j in on_node)
        assert n["earnings"] == sum(pricing.payout(j["credits_charged"], share) for j in on_node)
    payouts = (await stack.client.get("/api/v1/credits/transactions?kind=payout&limit=100", headers=op)).json()
    assert {t["job_id"] for t in payouts["transactions"]} == {j["id"] for j in served}
    assert sum(t["amount"] for t in payouts["transactions"]) == earnings["earnings"]
    assert (await stack.client.get("/api/v1/credits", headers=op)).json()["balance"] == earnings["earnings"]
    # The customer sees nothing of the operator's side; the operator nothing of the customer's jobs.
    assert (await stack.client.get("/api/v1/credits/earnings", headers=stack.auth(customer))).json() == \
        {"nodes": [], "jobs_served": 0, "earnings": 0}
    assert (await stack.client.get(f"/api/v1/jobs/{ids[0]}", headers=op)).status_code == 404


def start_agent(stack, engine_url: str, node_id: str, token: str, name: str) -> RunningNode:
    """A node agent for a node registered over the API (the stack stops it with the others)."""
    settings = NodeSettings(nats_url=stack.nats_url, node_token=token, engine_url=engine_url, max_concurrency=2,
                            advertise_interval_s=0.5, log_format="console", log_level="warning")
    agent = NodeAgent(settings, create_engine("ollama", engine_url), node_id=node_id)
    node = RunningNode(agent, asyncio.create_task(agent.run()), name)
    stack.nodes.append(node)
    return node
