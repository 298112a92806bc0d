"""Rate limits per key shared by two control-plane replicas: headers, 429 with Retry-After, tokens, key limits."""

from __future__ import annotations

import openai
import psycopg
import pytest

from tests.harness import Stack

T0 = 1_800_000_000  # a window start (a multiple of 60)


class FrozenClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def replicas(nats_url, database_url, double):
    overrides = {"rate_limit_rpm": 6, "rate_limit_tpm": 0}
    a = await Stack(nats_url, database_url, dict(overrides)).start()
    b = await Stack(nats_url, database_url, dict(overrides)).start()
    clock = FrozenClock(T0 + 10)
    for s in (a, b):
        s.runtime.gateway.limiter.clock = clock
    try:
        await a.add_node(double.url, slots=8)
        await a.wait_nodes_serving("qwen2.5:7b")
        await b.wait_nodes_serving("qwen2.5:7b")
        yield a, b, clock
    finally:
        await b.stop()
        await a.stop()


def limits(r) -> tuple[int, int, int]:
    return int(r.headers["x-ratelimit-limit"]), int(r.headers["x-ratelimit-remaining"]), int(r.headers["x-ratelimit-reset"])


async def test_two_replicas_share_one_budget(replicas):
    a, b, clock = replicas
    key = await a.key()
    r = await a.client.get("/api/v1/jobs", headers=a.auth(key))
    assert limits(r) == (6, 6, T0 + 60)

    seen = []
    for i in range(6):
        stack = (a, b)[i % 2]
        r = await stack.submit(key, model="qwen2.5:7b")
        assert r.status_code == 200, r.text
        seen.append(limits(r)[1])
    assert seen == [5, 4, 3, 2, 1, 0]

    for stack in (a, b):
        r = await stack.submit(key, model="qwen2.5:7b")
        assert (r.status_code, r.json()["error"]) == (429, "rate_limited"), r.text
        assert r.headers["retry-after"] == "50"
        assert limits(r) == (6, 0, T0 + 60)
        assert "6 requests per minute" in r.json()["error_message"]
    r = await b.client.post("/api/v1/jobs", json={"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "x"}]},
                            headers=b.auth(key) | {"X-API-Version": "2"})
    assert r.status_code == 429 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/rate_limited") and r.headers["retry-after"] == "50"

    # Reads are not counted but report the budget; another key has its own budget.
    r = await b.client.get("/api/v1/jobs", headers=b.auth(key))
    assert r.status_code == 200 and limits(r) == (6, 0, T0 + 60)
    other = await a.key("bob")
    assert (await b.submit(other, model="qwen2.5:7b")).status_code == 200

    # The next window starts afresh on both replicas.
    clock.t = T0 + 61
    r = await b.submit(key, model="qwen2.5:7b")
    assert r.status_code == 200 and limits(r) == (6, 5, T0 + 120)
    r = await a.submit(key, model="qwen2.5:7b")
    assert r.status_code == 200 and limits(r) == (6, 4, T0 + 120)


async def test_concurrent_requests_on_two_replicas_never_exceed_the_limit(replicas):
    import asyncio

    a, b, _ = replicas
    key = await a.key()
    results = await asyncio.gather(*((a, b)[i % 2].submit(key, model="qwen2.5:7b") for i in range(20)))
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 6 + [429] * 14, codes


async def test_tokens_per_minute_and_the_keys_own_limits(nats_url, database_url, double):
    s = await Stack(nats_url, database_url, {"rate_limit_rpm": 100, "rate_limit_tpm": 2000}).start()
    try:
        s.runtime.gateway.limiter.clock = FrozenClock(T0 + 5)
        await s.add_node(double.url, slots=4)
        await s.wait_nodes_serving("qwen2.5:7b")
        key = await s.key()
        r = await s.submit(key, model="qwen2.5:7b", max_tokens=1200)
        assert r.status_code == 200, r.text
        assert int(r.headers["x-ratelimit-limit-tokens"]) == 2000
        left = int(r.headers["x-ratelimit-remaining-tokens"])
        assert 0 < left < 800
        # /v1 answers carry OpenAI's header names too (resets as durations), read through the official SDK.
        sdk = openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key=key, max_retries=0)
        raw = await sdk.chat.completions.with_raw_response.create(
            model="qwen2.5:7b", messages=[{"role": "user", "content": "x"}], max_tokens=10)
        h = raw.headers
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("100", "98")
        assert h["x-ratelimit-reset-requests"] == h["x-ratelimit-reset-tokens"] == "55s"
        assert int(h["x-ratelimit-limit-tokens"]) == 2000 and int(h["x-ratelimit-remaining-tokens"]) < left
        left = int(h["x-ratelimit-remaining-tokens"])
        assert "x-ratelimit-limit-requests" not in r.headers  # the native API keeps its own names only
        r = await s.submit(key, model="qwen2.5:7b", max_tokens=900)
        assert (r.status_code, r.json()["error"]) == (429, "rate_limited")
        assert "tokens per minute" in r.json()["error_message"] and r.headers["retry-after"] == "55"
        r = await s.submit(key, model="qwen2.5:7b", max_tokens=5000)
        assert r.status_code == 429 and "lower max_tokens" in r.json()["error_message"]
        assert (await s.submit(key, model="qwen2.5:7b", max_tokens=100)).status_code == 200

        # A key's own limits win over the plan default.
        limited = await s.key("carol")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE api_keys SET rate_limit_rpm = 2 WHERE account_id = "
                         "(SELECT id FROM accounts WHERE name = 'carol')")
        s.runtime.auth.invalidate()
        codes = [(await s.submit(limited, model="qwen2.5:7b", max_tokens=10)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
    finally:
        await s.stop()


async def test_unauthenticated_and_unlimited_responses(nats_url, database_url):
    s = await Stack(nats_url, database_url, {"rate_limit_rpm": 0, "rate_limit_tpm": 0}).start()
    try:
        r = await s.client.get("/api/v1/jobs")
        assert r.status_code == 401 and "x-ratelimit-limit" not in r.headers
        key = await s.key()
        r = await s.client.get("/api/v1/jobs", headers=s.auth(key))
        assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers  # 0 = unlimited
    finally:
        await s.stop()
