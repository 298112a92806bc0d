"""Idempotency-Key on POST /api/v1/jobs: replays, a different body, races across two replicas, expiry."""

from __future__ import annotations

import asyncio

import psycopg

from tests.harness import Stack

BODY = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "Hello there"}]}


def job_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


async def post(stack: Stack, key: str, body: dict, idem: str | None, **headers: str):
    extra = {"Idempotency-Key": idem} if idem is not None else {}
    return await stack.client.post("/api/v1/jobs", json=body, headers=stack.auth(key) | extra | headers)


async def test_a_retry_returns_the_original_job(stack, double, database_url):
    key = await stack.ready(double, "qwen2.5:7b")

    first = await post(stack, key, BODY, "order-42")
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    job = await stack.wait_job(key, first.json()["id"])
    # Same key, same body (keys in another order): the same job, now completed, and no new job.
    again = await post(stack, key, {"messages": BODY["messages"], "model": BODY["model"]}, "order-42")
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == job["id"] and again.json()["status"] == "completed"
    assert job_count(database_url) == 1

    # Same key, different body: a clear error in both envelopes.
    other = await post(stack, key, BODY | {"max_tokens": 7}, "order-42")
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    assert "order-42" in other.json()["error_message"]
    other = await post(stack, key, BODY | {"max_tokens": 7}, "order-42", **{"X-API-Version": "2"})
    assert other.status_code == 422 and other.json()["type"].endswith("/idempotency_key_reused")

    # Keys belong to an account; without a key every request is a new job; malformed keys are refused.
    bob = await stack.key("bob")
    assert (await post(stack, bob, BODY, "order-42")).json()["id"] != job["id"]
    assert (await post(stack, key, BODY, None)).json()["id"] != job["id"]
    bad = await post(stack, key, BODY, "has spaces in it")
    assert (bad.status_code, bad.json()["error"]) == (400, "bad_request")


async def test_a_failed_request_does_not_keep_the_key_and_keys_expire(stack, double, database_url):
    key = await stack.ready(double, "qwen2.5:7b")
    missing = await post(stack, key, BODY | {"model": "nope:1b"}, "k1")
    assert missing.status_code == 404
    # The same key now works for a request that succeeds (the failed one never created a job).
    ok = await post(stack, key, BODY, "k1")
    assert ok.status_code == 200 and "idempotent-replayed" not in ok.headers

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    fresh = await post(stack, key, BODY | {"max_tokens": 9}, "k1")  # expired: a new request may reuse it
    assert fresh.status_code == 200 and fresh.json()["id"] != ok.json()["id"]


async def test_racing_retries_on_two_replicas_create_one_job(nats_url, database_url, double):
    a = await Stack(nats_url, database_url).start()
    b = await Stack(nats_url, database_url).start()
    try:
        key = await a.ready(double, "qwen2.5:7b", slots=4)
        await b.wait_nodes_serving("qwen2.5:7b")
        for attempt in range(3):
            idem = f"race-{attempt}"
            replies = await asyncio.gather(*(post((a, b)[i % 2], key, BODY, idem) for i in range(10)))
            assert {r.status_code for r in replies} == {200}, [r.text for r in replies]
            assert len({r.json()["id"] for r in replies}) == 1
            assert sum("idempotent-replayed" not in r.headers for r in replies) == 1
        assert job_count(database_url) == 3
        job_id = replies[0].json()["id"]
        assert (await a.wait_job(key, job_id))["status"] == "completed"
    finally:
        await b.stop()
        await a.stop()


async def test_a_streamed_retry_streams_the_original_job(stack, double, database_url):
    from tests.sse import collect, tokens

    key = await stack.ready(double, "qwen2.5:7b")
    body = BODY | {"stream": True}
    headers = stack.auth(key) | {"Idempotency-Key": "stream-1"}
    async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=headers) as r:
        first = await collect(r)
    async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=headers) as r:
        assert r.headers["idempotent-replayed"] == "true"
        again = await collect(r)
    assert first[0].event == again[0].event == "job"
    assert first[0].json()["id"] == again[0].json()["id"]
    assert tokens(again) == tokens(first) and again[-1].event == "done"
    assert job_count(database_url) == 1
