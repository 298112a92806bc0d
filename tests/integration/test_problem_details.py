"""Error envelopes on every error path: {error, error_message} by default, RFC 9457 problem+json with
X-API-Version: 2; and the request id: kept from the caller, stored on the job, bound in every log line."""

from __future__ import annotations

import psycopg
import pytest
import structlog
from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from control_plane.lib.request_id import request_id_middleware
from control_plane.lib.responses import EXCEPTION_HANDLERS, PROBLEM_TYPE_BASE
from tests.harness import Stack

V2 = {"X-API-Version": "2"}


def assert_v1(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "error_message"} and body["error"] == code and body["error_message"]
    assert r.headers.get("x-request-id")


def assert_problem(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["type"] == PROBLEM_TYPE_BASE + code and body["type"].endswith("/" + code)
    assert body["status"] == status and body["title"] and body["detail"]
    assert r.headers.get("x-request-id")


@pytest.fixture
async def limited(nats_url, database_url, double):
    s = await Stack(nats_url, database_url, {"rate_limit_rpm": 2}).start()
    s.runtime.gateway.limiter.clock = lambda: 1_800_000_030.0  # one window for the whole test
    try:
        await s.add_node(double.url)
        await s.wait_nodes_serving("qwen2.5:7b")
        yield s
    finally:
        await s.stop()


async def test_every_error_path_in_both_envelopes(limited):
    s = limited
    key = await s.key()
    auth = s.auth(key)
    body = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        ("GET", "/api/v1/no-such-route", {}, None, 404, "not_found"),
        ("PUT", "/api/v1/jobs", auth, body, 405, "method_not_allowed"),
        ("POST", "/api/v1/jobs", auth, {"model": "qwen2.5:7b"}, 400, "bad_request"),
        ("POST", "/api/v1/jobs", auth, body | {"temperature": 9}, 400, "bad_request"),
        ("GET", "/api/v1/jobs", {}, None, 401, "unauthorized"),
        ("GET", "/api/v1/jobs", {"Authorization": "Bearer inf_nope"}, None, 401, "unauthorized"),
        ("GET", "/api/v1/jobs/job_0000000000000000", auth, None, 404, "not_found"),
        ("POST", "/api/v1/jobs", auth, body | {"model": "nope:1b"}, 404, "model_not_found"),
        ("POST", "/api/v1/jobs", auth, body | {"response_schema": {"type": 12}}, 400, "bad_request"),
    ]
    for method, path, headers, payload, status, code in cases:
        r = await s.client.request(method, path, headers=headers, json=payload)
        assert_v1(r, status, code)
        r = await s.client.request(method, path, headers=headers | V2, json=payload)
        assert_problem(r, status, code)
        if code == "bad_request" and payload and "model" in payload and "messages" not in payload:
            assert "messages" in r.json()["detail"]

    # 429: the two requests of this window were spent above (model_not_found counts); both envelopes.
    r = await s.client.post("/api/v1/jobs", headers=auth, json=body)
    assert_v1(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    r = await s.client.post("/api/v1/jobs", headers=auth | V2, json=body)
    assert_problem(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-remaining"] == "0"

    # PostgreSQL gone: 503 service_unavailable in the documented envelopes, no driver text.
    await s.runtime.db.close()
    s.runtime.auth.invalidate()
    r = await s.client.get("/api/v1/jobs", headers=auth)
    assert_v1(r, 503, "service_unavailable")  # the documented answer when PostgreSQL is unreachable
    assert "postgres" not in r.text.lower() and "pool" not in r.text.lower() and "retry" in r.text
    r = await s.client.get("/api/v1/jobs", headers=auth | V2)
    assert_problem(r, 503, "service_unavailable")


async def test_unexpected_exceptions_are_500_in_both_envelopes():
    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    app = Litestar([boom], exception_handlers=EXCEPTION_HANDLERS, middleware=[request_id_middleware])
    async with AsyncTestClient(app) as client:
        r = await client.get("/boom")
        assert_v1(r, 500, "internal_error")
        assert "secret internals" not in r.text and "x-request-id" in r.json()["error_message"]
        r = await client.get("/boom", headers=V2)
        assert_problem(r, 500, "internal_error")
        assert r.json()["title"] == "Internal Server Error"


async def test_request_id_is_kept_stored_on_the_job_and_in_every_log_line(stack, double, database_url):
    key = await stack.ready(double, "qwen2.5:7b")
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        r = await stack.client.post("/api/v1/jobs", headers=stack.auth(key) | {"X-Request-Id": "trace-abc.123"},
                                    json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
        r2 = await stack.client.post("/api/v1/jobs", headers=stack.auth(key) | {"X-Request-Id": "trace-def.456"},
                                     json={"model": "auto", "routing": {"model_pool": ["gone:1b"]},
                                           "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-abc.123"
    assert r2.status_code == 404 and r2.headers["x-request-id"] == "trace-def.456"
    routed = [e for e in logs if e.get("event") == "model_routed"]
    assert routed and all(e.get("request_id") == "trace-abc.123" for e in routed)
    # Every line logged while the two requests ran names the request it belongs to (none without an id).
    assert logs and [e for e in logs if e.get("request_id") not in {"trace-abc.123", "trace-def.456"}] == []
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT request_id FROM jobs WHERE id = %s", (r.json()["id"],)).fetchone()[0]
    assert stored == "trace-abc.123"

    # Without one (or with an unusable one), a fresh id is made and stored.
    r = await stack.client.post("/api/v1/jobs", headers=stack.auth(key) | {"X-Request-Id": "bad id with spaces"},
                                json={"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]})
    rid = r.headers["x-request-id"]
    assert rid != "bad id with spaces" and len(rid) == 36
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT request_id FROM jobs WHERE id = %s", (r.json()["id"],)).fetchone()[0] == rid
