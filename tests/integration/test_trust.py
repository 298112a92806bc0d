"""Trust on the real stack: usage charged from what the text can hold, speed from the control plane's own clock,
reputation shown to the right people, quarantine from real evidence, persisted, and an admin's clear."""

from __future__ import annotations

from control_plane.credits import pricing
from control_plane.credits.pricing import Price
from control_plane.scheduler.registry import NodeRegistry
from control_plane.trust.service import TrustService
from tests.doubles.ollama_double import OllamaDouble
from tests.e2e.test_node_cli import run_cli
from tests.fixtures.waiting import wait_until
from tests.harness import Stack

MODEL = "qwen2.5:7b"
ANSWER = ["Hello", " big", " world"]


async def nodes_by_id(stack, key) -> dict[str, dict]:
    r = await stack.client.get("/api/v1/nodes", headers=stack.auth(key))
    assert r.status_code == 200, r.text
    return {n["id"]: n for n in r.json()["nodes"]}


async def run_job(stack, key, **body) -> dict:
    r = await stack.submit(key, model=MODEL, **body)
    assert r.status_code == 200, r.text
    return await stack.wait_job(key, r.json()["id"])


async def test_inflated_usage_is_charged_down_and_the_inflating_node_ends_in_quarantine(stack):
    async with OllamaDouble(models=[MODEL], tokens=ANSWER) as honest_engine, \
            OllamaDouble(models=[MODEL], tokens=ANSWER, usage_factor=1000) as cheat_engine:
        honest = await stack.add_node(honest_engine.url, name="honest", operator="op-honest")
        cheat = await stack.add_node(cheat_engine.url, name="cheat", operator="op-cheat")
        await stack.wait_nodes_serving(MODEL, 2)
        user, admin = await stack.key("user"), await stack.key("root", admin=True)
        cheat_operator = await stack.key("op-cheat")
        price = Price(stack.settings.default_price_input, stack.settings.default_price_output)

        fair = await run_job(stack, user, node_id=honest.node_id, max_tokens=200)
        assert fair["status"] == "completed" and fair["result"]["usage"] == {"prompt_tokens": 2, "total_tokens": 5,
                                                                            "completion_tokens": 3}
        inflated = await run_job(stack, user, node_id=cheat.node_id, max_tokens=200)
        assert inflated["status"] == "completed" and inflated["result"]["content"] == "Hello big world"
        usage = inflated["result"]["usage"]
        # The node claimed 3,000 completion tokens; 15 bytes of text hold at most 15 (+1 for the end token).
        assert usage["completion_tokens"] == len("Hello big world".encode()) + 1
        # It claimed 2,000 prompt tokens for "Hello there": cut to the stored request's bytes + template slack.
        assert 2 <= usage["prompt_tokens"] < 400
        assert inflated["credits_charged"] == pricing.cost(usage["prompt_tokens"], usage["completion_tokens"], price)
        capped = await run_job(stack, user, node_id=cheat.node_id, max_tokens=2)
        assert capped["result"]["usage"]["completion_tokens"] == 2  # max_tokens bounds it first

        # Reputation: admins see every node's, an operator its own nodes', anyone else none.
        seen = await nodes_by_id(stack, admin)
        assert seen[cheat.node_id]["trust"]["usage_capped"] == 2
        assert seen[honest.node_id]["trust"]["usage_capped"] == 0
        assert seen[cheat.node_id]["reputation"] < seen[honest.node_id]["reputation"]
        own = await nodes_by_id(stack, cheat_operator)
        assert own[cheat.node_id]["trust"]["usage_capped"] == 2 and "reputation" not in own[honest.node_id]
        assert all("reputation" not in n and "trust" not in n for n in (await nodes_by_id(stack, user)).values())

        # Each capped job is evidence against the node: it ends in quarantine (4 / (5 + 9) < 0.3).
        for _ in range(7):
            await run_job(stack, user, node_id=cheat.node_id)
        seen = await wait_until(lambda: _quarantined(stack, admin, cheat.node_id), timeout=30,
                                message="the inflating node was never quarantined")
        assert seen[honest.node_id]["state"] == "online"
        r = await stack.client.get("/api/v1/nodes", headers=stack.auth(admin), params={"state": "quarantined"})
        assert [n["id"] for n in r.json()["nodes"]] == [cheat.node_id]

        # Quarantined: user jobs go elsewhere; one pinned to it is never run there.
        for _ in range(3):
            job = await run_job(stack, user)
            assert job["node_id"] == honest.node_id
        pinned = await run_job(stack, user, node_id=cheat.node_id, max_wallclock_secs=1.5)
        assert pinned["status"] == "failed" and pinned["error"] == "no_capacity"
        served_before = len(cheat_engine.requests_to("/api/chat"))

        # Persisted: another replica starting now loads the quarantine from PostgreSQL.
        await stack.runtime.trust.flush()
        fresh = TrustService(stack.runtime.db, NodeRegistry())
        await fresh.start()
        assert fresh.quarantined(cheat.node_id) and not fresh.quarantined(honest.node_id)

        # The operator sees it in `infernet-node status` (with its API key); a stranger's key shows nothing.
        code, out = await run_cli("status", "--node-token", cheat.agent.settings.node_token, "--engine-url",
                                  cheat_engine.url, "--metrics-port", "0", "--api-url", stack.url,
                                  "--api-key", cheat_operator)
        assert code == 0 and "QUARANTINED" in out and "usage capped 9" in out, out
        code, out = await run_cli("status", "--node-token", cheat.agent.settings.node_token, "--engine-url",
                                  cheat_engine.url, "--metrics-port", "0", "--api-url", stack.url, "--api-key", user)
        assert code == 0 and "trust     unknown: control plane answered 404" in out, out

        # Only an admin clears it; then the node is back, on probation.
        path = f"/api/v1/nodes/{cheat.node_id}/clear-quarantine"
        assert (await stack.client.post(path, headers=stack.auth(cheat_operator))).status_code == 403
        r = await stack.client.post(path, headers=stack.auth(admin))
        assert r.status_code == 200, r.text
        assert r.json()["quarantined"] is False and r.json()["probation"] is True and r.json()["reputation"] == 0.8
        assert (await nodes_by_id(stack, admin))[cheat.node_id]["state"] == "online"
        job = await run_job(stack, user, node_id=cheat.node_id)
        assert job["status"] == "completed" and len(cheat_engine.requests_to("/api/chat")) == served_before + 1
        missing = await stack.client.post("/api/v1/nodes/node_ffffff/clear-quarantine", headers=stack.auth(admin))
        assert missing.status_code == 404


async def _quarantined(stack, admin, node_id):
    seen = await nodes_by_id(stack, admin)
    return seen if seen[node_id]["state"] == "quarantined" else None


async def test_a_node_advertising_99999_tokens_per_second_but_serving_slowly_loses_its_placement_advantage(stack):
    # The liar's counters say 10 us per token (~100,000 tokens/s); it really takes 80 ms per token.
    async with OllamaDouble(models=[MODEL], token_count=8, eval_ns_per_token=10_000, delay_ms=80) as liar_engine, \
            OllamaDouble(models=[MODEL], token_count=8, eval_ns_per_token=10_000_000) as fair_engine:
        liar = await stack.add_node(liar_engine.url, name="liar", bench_on_start=True)
        fair = await stack.add_node(fair_engine.url, name="fair", bench_on_start=True)
        registry = stack.runtime.registry

        def advertised(node):
            view = registry.get(node.node_id)
            return view is not None and view.accepting and (view.models.get(MODEL) or None) \
                and view.models[MODEL].tokens_per_second
        await wait_until(lambda: advertised(liar) and advertised(fair), timeout=30,
                         message="both nodes never advertised a tokens/sec figure")
        assert registry.get(liar.node_id).models[MODEL].tokens_per_second > 90_000
        user = await stack.key("user")

        first = await run_job(stack, user, max_tokens=8)
        assert first["node_id"] == liar.node_id  # before any job, the advertised figure is the prior
        await wait_until(lambda: stack.runtime.trust.view(liar.node_id).served >= 1, timeout=10,
                         message="the liar's job was never measured")
        later = [(await run_job(stack, user, max_tokens=8))["node_id"] for _ in range(4)]
        assert later == [fair.node_id] * 4
        # The advertisement still says ~100,000 tokens/s; placement no longer believes it.
        assert registry.get(liar.node_id).models[MODEL].tokens_per_second > 90_000


async def test_an_operators_payout_is_held_for_the_holdback_window_then_released(nats_url, database_url):
    stack = await Stack(nats_url, database_url, overrides={"payout_holdback_s": 1.0}).start()
    try:
        async with OllamaDouble(models=[MODEL], token_count=200) as engine:  # enough tokens for a payout >= 1
            await stack.add_node(engine.url, operator="op")
            await stack.wait_nodes_serving(MODEL)
            user, operator = await stack.key("user"), await stack.key("op")
            job = await run_job(stack, user)
            payout = pricing.payout(job["credits_charged"], stack.settings.operator_share_bps)
            assert payout > 0

            async def credits():
                return (await stack.client.get("/api/v1/credits", headers=stack.auth(operator))).json()
            held = await credits()
            grant = stack.settings.signup_credits
            released = {"balance": grant + payout, "reserved": 0, "available": grant + payout}
            # Either still held (reserved, not available) or already released: nothing in between.
            assert held in ({"balance": grant + payout, "reserved": payout, "available": grant}, released)
            await wait_until(lambda: _equal(credits, released), timeout=30, message="the payout was never released")
            notes = [t["note"] for t in (await stack.client.get(
                "/api/v1/credits/transactions", headers=stack.auth(operator), params={"kind": "payout"})).json()[
                "transactions"]]
            assert "holdback ended" in notes
    finally:
        await stack.stop()


async def _equal(read, expected) -> bool:
    return await read() == expected
