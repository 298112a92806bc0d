"""Keys cannot lift their own limits: self-PATCH of limits, un-expiring a key, and minting keys to multiply a budget
are refused (403 naming the field) or bounded; an admin key still may do each of them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from tests.harness import Stack


def error(r) -> tuple[int, str, str | None]:
    body = r.json()
    return r.status_code, body.get("error"), body.get("param")


@pytest.fixture
async def limited(nats_url, database_url, double):
    s = await Stack(nats_url, database_url, {"rate_limit_rpm": 4, "rate_limit_tpm": 0}).start()
    limiter = s.runtime.gateway.limiter
    frozen = limiter.window_start() + 1.0  # the test's requests all fall in one window: none straddles a minute
    limiter.clock = lambda: frozen
    try:
        await s.add_node(double.url, slots=4)
        await s.wait_nodes_serving("qwen2.5:7b")
        yield s
    finally:
        await s.stop()


async def _key_id(stack: Stack, key: str) -> str:
    return (await stack.runtime.auth.authenticate(f"Bearer {key}")).key_id


async def test_a_key_cannot_raise_or_clear_its_own_limits(stack):
    key = await stack.key("mallory")
    h = stack.auth(key)
    me = await _key_id(stack, key)
    for body in ({"rate_limit_rpm": 1_000_000_000, "rate_limit_tpm": 1_000_000_000}, {"rate_limit_rpm": 601},
                 {"rate_limit_tpm": 2_000_001}):
        r = await stack.client.patch(f"/api/v1/keys/{me}", headers=h, json=body)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (body, r.text)
        assert "admin" in r.json()["error_message"]
    r = await stack.client.patch(f"/api/v1/keys/{me}", headers=h | {"X-API-Version": "2"},
                                 json={"rate_limit_rpm": 10**9})
    assert (r.status_code, r.json()["param"]) == (403, "rate_limit_rpm")
    # Lowering is allowed; clearing (back to the plan default, a wider limit) or raising again is not.
    r = await stack.client.patch(f"/api/v1/keys/{me}", headers=h, json={"rate_limit_rpm": 10})
    assert r.status_code == 200 and r.json()["rate_limit_rpm"] == 10, r.text
    for body in ({"rate_limit_rpm": None}, {"rate_limit_rpm": 11}):
        r = await stack.client.patch(f"/api/v1/keys/{me}", headers=h, json=body)
        assert r.status_code == 403, (body, r.text)
    row = await stack.runtime.db.fetchone("get_api_key", {"id": me, "account_id": (
        await stack.runtime.auth.authenticate(f"Bearer {key}")).account_id})
    assert (row["rate_limit_rpm"], row["rate_limit_tpm"]) == (10, None)
    # An admin key of the account may raise and clear limits.
    admin = await stack.key("mallory", admin=True)
    r = await stack.client.patch(f"/api/v1/keys/{me}", headers=stack.auth(admin),
                                 json={"rate_limit_rpm": 5000, "rate_limit_tpm": None})
    assert r.status_code == 200 and (r.json()["rate_limit_rpm"], r.json()["rate_limit_tpm"]) == (5000, None)


async def test_an_expired_key_cannot_be_revived_by_a_sibling(stack):
    key = await stack.key("mallory")
    h = stack.auth(key)
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    r = await stack.client.post("/api/v1/keys", headers=h, json={"name": "old", "expires_at": past})
    assert r.status_code == 201 and r.json()["status"] == "expired", r.text
    old, old_id = r.json()["key"], r.json()["id"]
    assert error(await stack.client.get("/api/v1/jobs", headers=stack.auth(old)))[:2] == (403, "forbidden")
    for body in ({"expires_at": None}, {"expires_at": "2999-01-01T00:00:00Z"}):
        r = await stack.client.patch(f"/api/v1/keys/{old_id}", headers=h, json=body)
        assert r.status_code == 403 and "expires_at" in r.json()["error_message"], (body, r.text)
    r = await stack.client.get("/api/v1/jobs", headers=stack.auth(old))
    assert r.status_code == 403 and "expired" in r.json()["error_message"]
    # Bringing an expiry earlier is fine; an admin key may extend one.
    soon = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    r = await stack.client.post("/api/v1/keys", headers=h, json={"expires_at": soon.isoformat()})
    sooner = (soon - timedelta(hours=1)).isoformat()
    r = await stack.client.patch(f"/api/v1/keys/{r.json()['id']}", headers=h, json={"expires_at": sooner})
    assert r.status_code == 200, r.text
    admin = await stack.key("mallory", admin=True)
    r = await stack.client.patch(f"/api/v1/keys/{old_id}", headers=stack.auth(admin), json={"expires_at": None})
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert (await stack.client.get("/api/v1/jobs", headers=stack.auth(old))).status_code == 200


async def test_minted_keys_are_no_wider_than_their_creator(stack):
    soon = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    admin = await stack.key("mallory", admin=True)
    r = await stack.client.post("/api/v1/keys", headers=stack.auth(admin), json={
        "rate_limit_rpm": 50, "rate_limit_tpm": 10_000, "expires_at": soon.isoformat()})
    parent = r.json()["key"]
    h = stack.auth(parent)
    for body, field in (({"rate_limit_rpm": 51}, "rate_limit_rpm"), ({"rate_limit_tpm": 10_001}, "rate_limit_tpm"),
                        ({"expires_at": (soon + timedelta(seconds=1)).isoformat()}, "expires_at"),
                        ({"admin": True}, None)):
        r = await stack.client.post("/api/v1/keys", headers=h | {"X-API-Version": "2"}, json=body)
        assert (r.status_code, r.json()["code"], r.json().get("param")) == (403, "forbidden", field), (body, r.text)
    # Absent fields take the creator's own limits and expiry, never the (wider) plan default or "never".
    r = await stack.client.post("/api/v1/keys", headers=h, json={"name": "child"})
    child = r.json()
    assert r.status_code == 201 and (child["rate_limit_rpm"], child["rate_limit_tpm"]) == (50, 10_000)
    assert child["expires_at"] == soon.strftime("%Y-%m-%dT%H:%M:%SZ")
    r = await stack.client.post("/api/v1/keys", headers=h, json={"rate_limit_rpm": 5})
    assert r.status_code == 201 and r.json()["rate_limit_rpm"] == 5


async def test_minting_keys_does_not_multiply_the_rate_budget(limited):
    s = limited
    parent = await s.key("mallory")  # the plan default: 4 requests per minute
    children = []
    for _ in range(3):
        r = await s.client.post("/api/v1/keys", headers=s.auth(parent), json={})
        assert r.status_code == 201, r.text
        children.append(r.json()["key"])
    grandchild = (await s.client.post("/api/v1/keys", headers=s.auth(children[0]), json={})).json()["key"]
    statuses = []
    for key in [parent, *children, grandchild] * 2:  # 10 requests across 5 keys; the budget is 4
        r = await s.submit(key, model="qwen2.5:7b", max_tokens=4)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"] == "rate_limited" and "retry-after" in r.headers
    assert statuses.count(200) == 4, statuses
    assert statuses.count(429) == 6, statuses
    with psycopg.connect(s.database_url) as conn:  # every admitted request was counted once on the parent's budget
        used = conn.execute("SELECT coalesce(sum(used), 0) FROM rate_limit_windows WHERE dim = 'requests' AND "
                            "key_id = %s", (await _key_id(s, parent),)).fetchone()[0]
    assert used == 4


async def test_an_admin_cannot_lock_its_own_account_out(stack):
    admin = stack.auth(await stack.key("ops", admin=True))
    r = await stack.client.patch("/api/v1/admin/accounts/ops", headers=admin, json={"is_active": False})
    assert (r.status_code, r.json()["error"]) == (409, "conflict") and "own account" in r.json()["error_message"]
    assert (await stack.client.get("/api/v1/admin/accounts/ops", headers=admin)).json()["is_active"] is True
