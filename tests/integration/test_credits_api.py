"""Credits against the real stack: 402 before anything runs, reservations, charges, refunds, prices, headers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import openai
import pytest

from control_plane.credits import pricing
from control_plane.credits.pricing import Price
from tests.doubles.ollama_double import OllamaDouble

MODEL = "qwen2.5:7b"


def cli(*args: str, database_url: str) -> str:
    out = subprocess.run([sys.executable, "-m", "control_plane.cli", *args], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, INFERNET_DATABASE_URL=database_url))
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


async def credits(stack, key) -> dict:
    r = await stack.client.get("/api/v1/credits", headers=stack.auth(key))
    assert r.status_code == 200, r.text
    return r.json()


async def test_an_account_made_with_zero_credits_gets_402_and_no_job(stack, double, database_url):
    broke = await asyncio.to_thread(cli, "keys", "create", "--account", "broke", "--credits", "0",
                                    database_url=database_url)
    await stack.add_node(double.url)
    await stack.wait_nodes_serving(MODEL)
    assert await credits(stack, broke) == {"balance": 0, "reserved": 0, "available": 0}

    r = await stack.submit(broke, model=MODEL)
    assert r.status_code == 402 and r.json()["error"] == "insufficient_credits", r.text
    assert "top up" in r.json()["error_message"] and "max_tokens" in r.json()["error_message"]
    r = await stack.submit(broke, model=MODEL, stream=True)
    assert r.status_code == 402
    r = await stack.client.post("/api/v1/jobs", headers=stack.auth(broke) | {"X-API-Version": "2"},
                                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 402 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/insufficient_credits") and r.json()["status"] == 402
    # The OpenAI SDK sees its own error shape for 402.
    client = openai.AsyncOpenAI(api_key=broke, base_url=f"{stack.url}/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 402 and raised.value.body["code"] == "insufficient_credits"
    await client.close()
    # Nothing was created: no job, no ledger entry.
    assert (await stack.client.get("/api/v1/jobs", headers=stack.auth(broke))).json()["jobs"] == []
    txs = (await stack.client.get("/api/v1/credits/transactions", headers=stack.auth(broke))).json()
    assert txs == {"transactions": [], "next_cursor": None}

    # Topped up with the CLI, the same request runs and is charged.
    assert "balance 1000 " in await asyncio.to_thread(cli, "credits", "add", "broke", "1000", database_url=database_url)
    r = await stack.submit(broke, model=MODEL, max_tokens=50)
    assert r.status_code == 200, r.text
    job = await stack.wait_job(broke, r.json()["id"])
    assert job["status"] == "completed" and job["credits_charged"] > 0
    assert (await credits(stack, broke))["balance"] == 1000 - job["credits_charged"]


async def test_keys_create_credits_sets_the_grant_or_tops_up(stack, database_url):
    key = await asyncio.to_thread(cli, "keys", "create", "--account", "ivy", "--credits", "777",
                                  database_url=database_url)
    assert (await credits(stack, key))["balance"] == 777
    again = await asyncio.to_thread(cli, "keys", "create", "--account", "ivy", "--credits", "23",
                                    database_url=database_url)
    assert (await credits(stack, again))["balance"] == 800
    plain = await asyncio.to_thread(cli, "keys", "create", "--account", "jack", database_url=database_url)
    assert (await credits(stack, plain))["balance"] == stack.settings.signup_credits


async def test_a_job_reserves_its_worst_case_and_is_charged_its_actual_tokens(stack):
    price = Price(stack.settings.default_price_input, stack.settings.default_price_output)
    async with OllamaDouble(models=[MODEL], token_count=30, stall_after=3) as d:
        key = await stack.ready(d, MODEL, account="kim")
        start = await credits(stack, key)
        content = "what is the capital of France?"
        r = await stack.submit(key, model=MODEL, max_tokens=200, messages=[{"role": "user", "content": content}])
        job_id = r.json()["id"]
        await d.wait_active(1)
        # While it runs, its worst case is held: the prompt bound plus all 200 tokens.
        worst = pricing.cost(pricing.estimate_prompt_tokens({"messages": [{"content": content}]}), 200, price)
        held = await credits(stack, key)
        assert held == {"balance": start["balance"], "reserved": worst, "available": start["balance"] - worst}
        running = await stack.client.get(f"/api/v1/jobs/{job_id}", headers=stack.auth(key))
        assert "x-credits-used" not in running.headers and "credits_charged" not in running.json()
        d.release()
        job = await stack.wait_job(key, job_id)
    usage = job["result"]["usage"]
    expected = pricing.cost(usage["prompt_tokens"], usage["completion_tokens"], price)
    assert usage["completion_tokens"] == 30 and job["credits_charged"] == expected
    r = await stack.client.get(f"/api/v1/jobs/{job_id}", headers=stack.auth(key))
    assert r.headers["x-credits-used"] == str(expected)
    assert await credits(stack, key) == {"balance": start["balance"] - expected, "reserved": 0,
                                         "available": start["balance"] - expected}
    entries = (await stack.client.get(f"/api/v1/credits/transactions?job_id={job_id}",
                                      headers=stack.auth(key))).json()["transactions"]
    assert [(e["kind"], e["amount"], e["held"]) for e in entries] == [
        ("release", 0, -(worst - expected)), ("charge", -expected, -expected), ("reserve", 0, worst)]


async def test_failed_cancelled_and_expired_jobs_are_refunded_in_full(stack):
    async with OllamaDouble(models=[MODEL], error_after=2, error_message="CUDA error: out of memory") as bad, \
            OllamaDouble(models=["llama3.2:3b"], stall_after=1) as stalls:
        key = await stack.key("liam")
        await stack.add_node(bad.url, name="bad")
        await stack.add_node(stalls.url, name="stalls", slots=1)
        await stack.wait_nodes_serving(MODEL)
        await stack.wait_nodes_serving("llama3.2:3b")
        start = await credits(stack, key)
        failed = (await stack.submit(key, model=MODEL)).json()["id"]
        running = (await stack.submit(key, model="llama3.2:3b")).json()["id"]
        await stalls.wait_active(1)
        queued = (await stack.submit(key, model="llama3.2:3b", max_wallclock_secs=1)).json()["id"]  # no capacity
        cancelled = (await stack.submit(key, model="llama3.2:3b")).json()["id"]
        assert (await stack.client.delete(f"/api/v1/jobs/{cancelled}", headers=stack.auth(key))).status_code == 200
        jobs = {j: await stack.wait_job(key, j) for j in (failed, queued, cancelled)}
        assert (await stack.client.delete(f"/api/v1/jobs/{running}", headers=stack.auth(key))).status_code == 200
        jobs[running] = await stack.wait_job(key, running)
    assert {j["status"] for j in jobs.values()} == {"failed", "cancelled"}
    assert jobs[queued]["error"] == "no_capacity" and jobs[failed]["error"] == "engine_error"
    assert all(j["credits_charged"] == 0 for j in jobs.values())
    assert await credits(stack, key) == start
    refunds = (await stack.client.get("/api/v1/credits/transactions?kind=refund", headers=stack.auth(key))).json()
    assert {e["job_id"] for e in refunds["transactions"]} == set(jobs)
    assert {e["note"] for e in refunds["transactions"]} == {"engine_error", "no_capacity", "cancelled"}


async def test_admin_prices_apply_to_new_jobs(stack, double):
    admin = stack.auth(await stack.key("root", admin=True))
    key = await stack.ready(double, MODEL, account="mia")
    r = await stack.client.post("/api/v1/admin/prices", headers=admin,
                                json={"model": MODEL, "input_per_mtok": 3_000_000, "output_per_mtok": 7_000_000})
    assert r.status_code == 200
    job = await stack.wait_job(key, (await stack.submit(key, model=MODEL, max_tokens=20)).json()["id"])
    usage = job["result"]["usage"]
    assert job["credits_charged"] == pricing.cost(usage["prompt_tokens"], usage["completion_tokens"],
                                                  Price(3_000_000, 7_000_000))
    # A price so high that one job exceeds the whole balance: refused before it exists.
    await stack.client.post("/api/v1/admin/prices", headers=admin,
                            json={"model": MODEL, "input_per_mtok": 10**12, "output_per_mtok": 10**12})
    r = await stack.submit(key, model=MODEL)
    assert (r.status_code, r.json()["error"]) == (402, "insufficient_credits")


async def test_openai_completion_carries_x_credits_used(stack, double):
    key = await stack.ready(double, MODEL, account="noah")
    r = await stack.client.post("/v1/chat/completions", headers=stack.auth(key),
                                json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code == 200, r.text
    job = (await stack.client.get(f"/api/v1/jobs/{r.headers['x-job-id']}", headers=stack.auth(key))).json()
    assert r.headers["x-credits-used"] == str(job["credits_charged"]) and job["credits_charged"] > 0


async def test_many_concurrent_jobs_from_one_account_near_its_limit(stack, database_url):
    """The HTTP path under real concurrency: never more reserved than the balance, everything settles."""
    async with OllamaDouble(models=[MODEL], token_count=5, delay_ms=2) as d:
        price = Price(stack.settings.default_price_input, stack.settings.default_price_output)
        one = pricing.cost(pricing.estimate_prompt_tokens({"messages": [{"content": "Hello there"}]}), 100, price)
        grant = one * 10 + one // 2
        key = await asyncio.to_thread(cli, "keys", "create", "--account", "olive", "--credits", str(grant),
                                      database_url=database_url)
        await stack.add_node(d.url, slots=8)
        await stack.wait_nodes_serving(MODEL)
        samples: list[dict] = []
        stop = asyncio.Event()

        async def sample():
            while not stop.is_set():
                samples.append(await credits(stack, key))
        sampler = asyncio.create_task(sample())
        responses = await asyncio.gather(*(stack.submit(key, model=MODEL, max_tokens=100) for _ in range(40)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 402} and codes.count(200) >= 10
        for r in responses:
            if r.status_code == 200:
                await stack.wait_job(key, r.json()["id"])
        stop.set()
        await sampler
    assert all(s["available"] >= 0 and s["reserved"] <= s["balance"] for s in samples)
    final = await credits(stack, key)
    assert final["reserved"] == 0
    ended = [await stack.wait_job(key, r.json()["id"]) for r in responses if r.status_code == 200]
    charged = sum(j["credits_charged"] for j in ended)
    assert final["balance"] == grant - charged
