"""No input makes the API answer 5xx: deep nesting, invalid UTF-8, NUL characters in every stored field and query
parameter, out-of-range cursors and oversized headers each get a 4xx with the documented code, a message naming
the field, and never database error text."""

from __future__ import annotations

import httpx
import pytest

MESSAGES = [{"role": "user", "content": "hi"}]
DB_WORDS = ("psycopg", "postgres", "bigint", "out of range", "Traceback", "unsupported Unicode", "\\u0000 cannot")


def assert_clear(r: httpx.Response, status: int, code: str, field: str | None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code, body
    if field is not None:
        assert field in body["error_message"], body
    assert not any(w.lower() in r.text.lower() for w in DB_WORDS), r.text


@pytest.fixture
async def key(stack, double):
    await stack.add_node(double.url)
    await stack.wait_nodes_serving("qwen2.5:7b")
    return await stack.key("alice")


def _post(stack, key, path, raw: bytes):
    return stack.client.post(path, content=raw, headers=stack.auth(key) | {"Content-Type": "application/json"})


async def test_deeply_nested_bodies_are_refused(stack, key):
    prefix = b'{"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}], '
    for field, nested in (("routing", b"[" * 100_000 + b"]" * 100_000),
                          ("response_schema", b'{"a":' * 5000 + b"1" + b"}" * 5000),
                          ("response_schema", b'{"type": "object", "properties": {"x": ' + b"[" * 3000
                           + b"]" * 3000 + b"}}")):
        r = await _post(stack, key, "/api/v1/jobs", prefix + b'"' + field.encode() + b'": ' + nested + b"}")
        assert_clear(r, 400, "bad_request", "nest")
    r = await _post(stack, key, "/v1/chat/completions",
                    b'{"model": "qwen2.5:7b", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text


async def test_invalid_utf8_is_refused(stack, key):
    for path in ("/api/v1/jobs", "/v1/chat/completions", "/api/v1/keys"):
        r = await _post(stack, key, path, b'{"model": "qwen\xff\xfe", "messages": [{"role": "user", "content": "h\xc3"}]}')
        assert r.status_code == 400, (path, r.text)
        text = r.json()["error_message"] if path.startswith("/api") else r.json()["error"]["message"]
        assert "UTF-8" in text, text


@pytest.mark.parametrize("body,field", [
    ({"model": "qwen2.5:7b", "webhook_url": "https://example.com/\u0000"}, "webhook_url"),
    ({"model": "qwen2.5:7b", "response_schema": {"type": "object", "description": "a\u0000b"}}, "response_schema"),
    ({"model": "qwen2.5:7b", "response_schema": {"a\u0000": {}}}, "response_schema"),
    ({"model": "qwen2.5:7b", "fallback_models": ["llama3.2:3b\u0000"]}, "fallback_models"),
    ({"model": "qwen2.5:7b\u0000"}, "model"),
    ({"model": "auto", "routing": {"model_pool": ["qwen2.5:7b\u0000"]}}, "routing"),
])
async def test_nul_in_job_fields_is_a_400_naming_the_field(stack, key, body, field):
    r = await stack.client.post("/api/v1/jobs", json=body | {"messages": MESSAGES}, headers=stack.auth(key))
    assert_clear(r, 400, "bad_request", field)


@pytest.mark.parametrize("method,path,body,field", [
    ("POST", "/api/v1/keys", {"name": "a\u0000b"}, "name"),
    ("POST", "/api/v1/keys", {"model_pool": ["qwen\u0000"]}, "model_pool"),
])
async def test_nul_in_key_fields_is_a_400_naming_the_field(stack, key, method, path, body, field):
    r = await stack.client.request(method, path, json=body, headers=stack.auth(key))
    assert_clear(r, 400, "bad_request", field)
    created = (await stack.client.post("/api/v1/keys", json={}, headers=stack.auth(key))).json()
    r = await stack.client.patch(f"/api/v1/keys/{created['id']}", json=body, headers=stack.auth(key))
    assert_clear(r, 400, "bad_request", field)


@pytest.mark.parametrize("path,field", [
    ("/api/v1/usage?model=a%00b", "model"),
    ("/api/v1/credits/transactions?job_id=job_%00", "job_id"),
    ("/api/v1/jobs?status=%00", "status"),
    ("/api/v1/usage?key_id=key_%00", "key_id"),
    ("/api/v1/credits/transactions?kind=%00", "kind"),
    ("/api/v1/jobs/job_%00", "id"),
    ("/api/v1/keys/key_%00", "id"),
])
async def test_nul_in_query_and_path_parameters_is_a_400(stack, key, path, field):
    r = await stack.client.get(path, headers=stack.auth(key))
    assert_clear(r, 400, "bad_request", field)


async def test_out_of_range_cursors_are_a_400(stack, key):
    for cursor in ("9999999999999999999", "99999999999999999999999"):
        r = await stack.client.get(f"/api/v1/credits/transactions?cursor={cursor}", headers=stack.auth(key))
        assert_clear(r, 400, "bad_request", "cursor")
    r = await stack.client.get("/api/v1/credits/transactions/99999999999999999999", headers=stack.auth(key))
    assert_clear(r, 404, "not_found", None)


async def test_bodies_and_parameters_are_read_as_strictly_as_the_document_types_them(stack, key):
    """What only a lax conversion took (0 as false, a number as a timestamp, "5" as an integer, a newline after a
    cursor, a date without its time) is a 400 naming the field; a whole number written 5.0 is an integer."""
    admin = await stack.key("ops", admin=True)
    for body, field in (({"admin": 0}, "admin"), ({"expires_at": 1893456000}, "expires_at"),
                        ({"rate_limit_rpm": "5"}, "rate_limit_rpm"), ({"expires_at": "2030-01-01"}, "expires_at"),
                        ({"expires_at": "2030-02-30T00:00:00Z"}, "expires_at")):
        r = await stack.client.post("/api/v1/keys", json=body, headers=stack.auth(admin))
        assert_clear(r, 400, "bad_request", field)
    r = await stack.client.post("/api/v1/keys", json={"rate_limit_rpm": 5.0, "expires_at": "2030-01-01t00:00:00z"},
                                headers=stack.auth(admin))
    assert r.status_code == 201, r.text
    assert (r.json()["rate_limit_rpm"], r.json()["expires_at"]) == (5, "2030-01-01T00:00:00Z")
    for query, field in (("/api/v1/credits/transactions?cursor=12%0A", "cursor"),
                         ("/api/v1/credits/transactions?kind=charge,%20refund", "kind"),
                         ("/api/v1/jobs?since=2026-01-01", "since"), ("/api/v1/jobs?status=", "status"),
                         ("/api/v1/usage?cursor=job_0123456789abcdef", "cursor"), ("/api/v1/nodes?state=gone", "state")):
        r = await stack.client.get(query, headers=stack.auth(key))
        assert_clear(r, 400, "bad_request", field)


async def test_oversized_request_headers_are_refused(stack, key):
    r = await stack.client.get("/api/v1/jobs", headers=stack.auth(key) | {"X-Big": "a" * 1_000_000})
    assert r.status_code == 431


async def test_oversized_bodies_are_413_and_wrong_methods_405_with_allow(stack, key):
    r = await _post(stack, key, "/api/v1/jobs", b'{"model": "' + b"a" * (10 * 1024 * 1024) + b'"}')
    assert_clear(r, 413, "payload_too_large", None)
    r = await stack.client.put("/api/v1/jobs", headers=stack.auth(key))
    assert_clear(r, 405, "method_not_allowed", "PUT")
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST", "OPTIONS"}


async def test_options_lists_every_method_of_the_path(stack, key):
    for path, methods in (("/api/v1/jobs", {"GET", "POST", "OPTIONS"}),
                          ("/api/v1/keys/key_0", {"GET", "PATCH", "DELETE", "OPTIONS"})):
        r = await stack.client.options(path)
        assert r.status_code == 204 and set(r.headers["allow"].replace(" ", "").split(",")) == methods, path


async def test_a_missing_field_is_named_as_the_param(stack, key):
    r = await stack.client.post("/api/v1/jobs", json={"messages": MESSAGES},
                                headers=stack.auth(key) | {"X-API-Version": "2"})
    assert (r.status_code, r.json()["code"], r.json()["param"]) == (400, "bad_request", "model"), r.text
    assert "model" in r.json()["detail"]
    r = await stack.client.post("/api/v1/jobs", json={"model": "qwen2.5:7b", "messages": [{"content": "x"}]},
                                headers=stack.auth(key) | {"X-API-Version": "2"})
    assert r.json()["param"] == "messages[0].role", r.text
    r = await stack.client.post("/v1/chat/completions", json={"messages": MESSAGES}, headers=stack.auth(key))
    assert (r.status_code, r.json()["error"]["param"]) == (400, "model"), r.text


async def test_the_401_points_to_the_cli_that_creates_keys(stack):
    for headers in ({}, {"Authorization": "Bearer inf_" + "x" * 40}):
        r = await stack.client.get("/api/v1/jobs", headers=headers)
        assert r.status_code == 401 and "infernet-control-plane keys create" in r.json()["error_message"]
        assert "POST /api/v1/keys" not in r.text
