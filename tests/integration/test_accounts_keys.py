"""API keys and accounts against the real stack: key management, 401 vs 403, admin endpoints, isolation,
secrets kept out of logs, and revocation reaching a second control-plane replica."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
import structlog

from protocol.identity import node_id_from_token
from tests.harness import Stack
from tests.fixtures.waiting import wait_until


def error(r) -> tuple[int, str]:
    return r.status_code, r.json().get("error")


async def test_keys_are_created_listed_updated_and_revoked(stack):
    key = await stack.key("alice")
    h = stack.auth(key)
    r = await stack.client.post("/api/v1/keys", headers=h, json={
        "name": "Production", "model_pool": ["qwen2.5:7b", "llama3.2:3b"], "optimize_mode": "cost",
        "rate_limit_rpm": 120, "expires_at": "2999-01-01T00:00:00Z"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert re.fullmatch(r"inf_[A-Za-z0-9]{40}", created["key"]) and created["key"].startswith(created["prefix"])
    assert created["model_pool"] == ["qwen2.5:7b", "llama3.2:3b"] and created["optimize_mode"] == "cost"
    assert (created["rate_limit_rpm"], created["rate_limit_tpm"], created["status"]) == (120, None, "active")
    assert created["expires_at"] == "2999-01-01T00:00:00Z" and created["admin"] is False

    # The new key works; listing shows prefixes and settings, never a key.
    new = stack.auth(created["key"])
    listed = (await stack.client.get("/api/v1/keys", headers=new)).json()["keys"]
    assert len(listed) == 2 and listed[0]["id"] == created["id"]
    assert all("key" not in k for k in listed)
    assert created["key"] not in (await stack.client.get("/api/v1/keys", headers=h)).text

    r = await stack.client.patch(f"/api/v1/keys/{created['id']}", headers=h,
                                 json={"name": "Prod", "optimize_mode": "latency", "model_pool": None,
                                       "rate_limit_tpm": 5000})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["name"], patched["optimize_mode"], patched["model_pool"]) == ("Prod", "latency", None)
    assert (patched["rate_limit_rpm"], patched["rate_limit_tpm"]) == (120, 5000)  # absent fields keep their value
    # The key's settings reach the Principal (for routing and rate limits) at once.
    principal = await stack.runtime.auth.authenticate(f"Bearer {created['key']}")
    assert (principal.optimize_mode, principal.model_pool, principal.rate_limit_tpm) == ("latency", None, 5000)
    for bad in ({"optimize_mode": "fastest"}, {"rate_limit_rpm": 0}, {"name": None}, {"unknown": 1},
                {"model_pool": []}, {"expires_at": "2999-01-01T00:00:00"}):
        r = await stack.client.patch(f"/api/v1/keys/{created['id']}", headers=h, json=bad)
        assert error(r) == (400, "bad_request"), (bad, r.text)

    r = await stack.client.delete(f"/api/v1/keys/{created['id']}", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["revoked_at"]
    r = await stack.client.get("/api/v1/jobs", headers=new)
    assert error(r) == (403, "forbidden") and "revoked" in r.json()["error_message"]
    assert error(await stack.client.patch(f"/api/v1/keys/{created['id']}", headers=h, json={"name": "x"})) == \
        (409, "conflict")
    assert (await stack.client.delete(f"/api/v1/keys/{created['id']}", headers=h)).status_code == 200  # idempotent


async def test_other_accounts_keys_are_never_visible(stack):
    alice, bob = await stack.key("alice"), await stack.key("bob")
    bob_keys = (await stack.client.get("/api/v1/keys", headers=stack.auth(bob))).json()["keys"]
    bob_key_id = bob_keys[0]["id"]
    h = stack.auth(alice)
    for method, body in (("GET", None), ("PATCH", {"name": "mine"}), ("DELETE", None)):
        r = await stack.client.request(method, f"/api/v1/keys/{bob_key_id}", headers=h, json=body)
        assert error(r) == (404, "not_found"), method
    assert bob_key_id not in (await stack.client.get("/api/v1/keys", headers=h)).text
    assert (await stack.client.get("/api/v1/jobs", headers=stack.auth(bob))).status_code == 200  # untouched
    assert error(await stack.client.get(f"/api/v1/usage?key_id={bob_key_id}", headers=h)) == (404, "not_found")
    # Nor can a non-admin make itself an admin key.
    r = await stack.client.post("/api/v1/keys", headers=h, json={"admin": True})
    assert error(r) == (403, "forbidden") and "admin" in r.json()["error_message"]


async def test_missing_and_unknown_keys_are_401_and_unusable_ones_403_saying_why(stack):
    admin = await stack.key("root", admin=True)
    key = await stack.key("carol")
    for headers in ({}, {"Authorization": "Bearer inf_" + "x" * 40}, {"Authorization": "Basic abc"}):
        r = await stack.client.get("/api/v1/credits", headers=headers)
        assert error(r) == (401, "unauthorized"), headers

    r = await stack.client.post("/api/v1/keys", headers=stack.auth(key),
                                json={"expires_at": (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()})
    short = r.json()["key"]
    await wait_until(lambda: datetime.now(timezone.utc).timestamp() > datetime.fromisoformat(
        r.json()["expires_at"].replace("Z", "+00:00")).timestamp() + 1.0, timeout=10, message="key never expired")
    r = await stack.client.get("/api/v1/credits", headers=stack.auth(short))
    assert error(r) == (403, "forbidden") and "expired" in r.json()["error_message"]

    r = await stack.client.patch("/api/v1/admin/accounts/carol", headers=stack.auth(admin), json={"is_active": False})
    assert r.status_code == 200 and r.json()["is_active"] is False
    r = await stack.client.get("/api/v1/credits", headers=stack.auth(key))
    assert error(r) == (403, "forbidden") and "deactivated" in r.json()["error_message"]
    r = await stack.client.get("/api/v1/credits", headers=stack.auth(key) | {"X-API-Version": "2"})
    assert r.status_code == 403 and r.json()["type"].endswith("/forbidden")
    await stack.client.patch("/api/v1/admin/accounts/carol", headers=stack.auth(admin), json={"is_active": True})
    assert (await stack.client.get("/api/v1/credits", headers=stack.auth(key))).status_code == 200


async def test_admin_creates_accounts_tops_up_sets_prices_and_registers_nodes(stack):
    admin = stack.auth(await stack.key("root", admin=True))
    user = stack.auth(await stack.key("dave"))
    for method, path, body in (("POST", "/api/v1/admin/accounts", {"name": "x"}),
                               ("GET", "/api/v1/admin/accounts", None),
                               ("POST", "/api/v1/admin/accounts/dave/credits", {"amount": 5}),
                               ("POST", "/api/v1/admin/prices",
                                {"model": "m", "input_per_mtok": 1, "output_per_mtok": 1}),
                               ("POST", "/api/v1/admin/nodes", {"name": "n"})):
        r = await stack.client.request(method, path, headers=user, json=body)
        assert error(r) == (403, "forbidden"), path

    r = await stack.client.post("/api/v1/admin/accounts", headers=admin, json={"name": "erin", "credits": 1234})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["account"]["name"] == "erin" and made["account"]["balance"] == 1234
    erin = stack.auth(made["key"]["key"])
    assert (await stack.client.get("/api/v1/credits", headers=erin)).json() == \
        {"balance": 1234, "reserved": 0, "available": 1234}
    assert error(await stack.client.post("/api/v1/admin/accounts", headers=admin, json={"name": "erin"})) == \
        (409, "conflict")

    r = await stack.client.post(f"/api/v1/admin/accounts/{made['account']['id']}/credits", headers=admin,
                                json={"amount": 766, "note": "welcome"})
    assert r.status_code == 201 and r.json()["kind"] == "deposit" and r.json()["amount"] == 766
    assert (await stack.client.get("/api/v1/credits", headers=erin)).json()["balance"] == 2000
    assert error(await stack.client.post("/api/v1/admin/accounts/nobody/credits", headers=admin,
                                         json={"amount": 1})) == (404, "not_found")
    assert error(await stack.client.post("/api/v1/admin/accounts/erin/credits", headers=admin,
                                         json={"amount": 0})) == (400, "bad_request")

    r = await stack.client.post("/api/v1/admin/prices", headers=admin,
                                json={"model": "qwen2.5:7b", "input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000})
    assert r.status_code == 200, r.text
    listed = (await stack.client.get("/api/v1/prices", headers=erin)).json()
    assert listed["default"] == {"model": "*", "input_per_mtok": stack.settings.default_price_input,
                                 "output_per_mtok": stack.settings.default_price_output, "updated_at": None}
    assert [(p["model"], p["input_per_mtok"], p["output_per_mtok"]) for p in listed["prices"]] == \
        [("qwen2.5:7b", 1_000_000, 2_000_000)]
    r = await stack.client.delete("/api/v1/admin/prices?model=qwen2.5:7b", headers=admin)
    assert r.status_code == 200 and (await stack.client.get("/api/v1/prices", headers=erin)).json()["prices"] == []

    r = await stack.client.post("/api/v1/admin/nodes", headers=admin, json={"name": "gpu-1", "operator": "erin"})
    assert r.status_code == 201, r.text
    node = r.json()
    assert node_id_from_token(node["token"]) == node["node_id"]
    assert node["operator_account_id"] == made["account"]["id"]
    earnings = (await stack.client.get("/api/v1/credits/earnings", headers=erin)).json()
    assert [n["node_id"] for n in earnings["nodes"]] == [node["node_id"]] and earnings["earnings"] == 0
    accounts = (await stack.client.get("/api/v1/admin/accounts", headers=admin)).json()["accounts"]
    assert {"root", "dave", "erin"} <= {a["name"] for a in accounts}


async def test_raw_keys_never_reach_the_logs(stack, capfd):
    with structlog.testing.capture_logs() as events:
        key = await stack.key("frank")
        h = stack.auth(key)
        created = (await stack.client.post("/api/v1/keys", headers=h, json={"name": "k2"})).json()["key"]
        await stack.client.get("/api/v1/jobs", headers=stack.auth(created))
        await stack.client.get("/api/v1/jobs", headers=stack.auth(created[:-1] + "Z"))  # unknown: 401
        key_id = (await stack.client.get("/api/v1/keys", headers=h)).json()["keys"][0]["id"]
        await stack.client.delete(f"/api/v1/keys/{key_id}", headers=h)
        await stack.client.get("/api/v1/jobs", headers=stack.auth(created))  # revoked: 403
    out, err = capfd.readouterr()
    logged = repr(events) + out + err
    assert any(e.get("event") == "keys_invalidated" for e in events)  # something was logged meanwhile
    for secret in (key, created, key[4:], created[4:]):
        assert secret not in logged


async def test_revocation_reaches_a_second_replica_at_once(nats_url, database_url, double):
    # Replica B caches keys for ten minutes: only the broadcast can make it notice a revocation in time.
    a = await Stack(nats_url, database_url).start()
    b = await Stack(nats_url, database_url, overrides={"auth_cache_secs": 600.0}).start()
    try:
        key = await a.key("grace")
        extra = (await a.client.post("/api/v1/keys", headers=a.auth(key), json={"name": "to revoke"})).json()
        assert (await b.client.get("/api/v1/jobs", headers=b.auth(extra["key"]))).status_code == 200  # now cached on B
        assert (await a.client.delete(f"/api/v1/keys/{extra['id']}", headers=a.auth(key))).status_code == 200

        async def refused_on_b():
            r = await b.client.get("/api/v1/jobs", headers=b.auth(extra["key"]))
            return r.status_code == 403 and "revoked" in r.json()["error_message"]
        await wait_until(refused_on_b, timeout=10, message="replica B still accepts a key revoked on replica A")

        # Key changes and account deactivation travel the same way.
        first_key = (await a.client.get("/api/v1/keys", headers=a.auth(key))).json()["keys"][-1]["id"]
        await a.client.patch(f"/api/v1/keys/{first_key}", headers=a.auth(key), json={"optimize_mode": "quality"})
        await wait_until(lambda: _mode(b, key), timeout=10, message="replica B never saw the key's new mode")
        admin = await a.key("root", admin=True)
        await a.client.patch("/api/v1/admin/accounts/grace", headers=a.auth(admin), json={"is_active": False})

        async def deactivated_on_b():
            return (await b.client.get("/api/v1/jobs", headers=b.auth(key))).status_code == 403
        await wait_until(deactivated_on_b, timeout=10, message="replica B still accepts a deactivated account's key")
    finally:
        await b.stop()
        await a.stop()


async def _mode(stack: Stack, key: str) -> bool:
    return (await stack.runtime.auth.authenticate(f"Bearer {key}")).optimize_mode == "quality"


@pytest.mark.parametrize("bad", [{"optimize_mode": "fast"}, {"rate_limit_rpm": -1}, {"model_pool": "m"},
                                 {"name": "x" * 201}, {"expires_at": "soon"}])
async def test_key_creation_validates_its_fields(stack, bad):
    key = await stack.key("henry")
    r = await stack.client.post("/api/v1/keys", headers=stack.auth(key), json=bad)
    assert error(r) == (400, "bad_request"), r.text
