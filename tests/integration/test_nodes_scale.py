"""The nodes list a page at a time (cursor, model and state filters), batched token checks, incremental node rows."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import msgspec
import nats

import protocol
from control_plane.accounts.service import ensure_account
from control_plane.nodes.revocation import revoke_everywhere
from control_plane.nodes.service import NodeRegistrations, register_node
from protocol import subjects
from tests.fixtures.waiting import wait_until


def advert(node, *, models=("m1",), state="online", active=0) -> protocol.Advertisement:
    return protocol.Advertisement(
        node_id=node.node_id, agent_version="0.1.0", engine="ollama", state=state, slots=2,
        active_jobs=active, interval_s=60.0, boot_id="b1",
        models=tuple(protocol.ModelInfo(name=m, loaded=True, tokens_per_second=40.0) for m in models))


async def network(stack):
    """12 nodes heard (8 serving m1, 4 serving m2, one of the m2 ones draining) and 7 registered but silent."""
    operator = (await ensure_account(stack.runtime.db, "alice"))["id"]
    heard = [await register_node(stack.runtime.db, f"heard-{i}", operator if i == 0 else None,
                                 models=("*",)) for i in range(12)]
    silent = [await register_node(stack.runtime.db, f"silent-{i}") for i in range(7)]
    nc = await nats.connect(stack.nats_url)
    try:
        for i, node in enumerate(heard):
            await nc.publish(subjects.node_advertise(node.node_id), protocol.encode(advert(
                node, models=("m1",) if i < 8 else ("m2",), state="draining" if i == 11 else "online")))
        await nc.flush()
    finally:
        await nc.close()
    await wait_until(lambda: stack.runtime.registry.online_count() == 12, timeout=30,
                     message="the 12 advertised nodes never all showed up")
    return heard, silent


async def pages(stack, key, **params) -> list[dict]:
    """Follow next_cursor from the first page to the last; every node entry in order."""
    seen, cursor = [], None
    for _ in range(100):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = await stack.client.get("/api/v1/nodes", params=query, headers=stack.auth(key))
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["nodes"]) <= params.get("limit", 100)
        seen += body["nodes"]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("next_cursor never ended")


async def test_pages_cover_every_node_once_and_filters_select_exactly(stack):
    key = await stack.key("alice")
    heard, silent = await network(stack)
    everyone = sorted(n.node_id for n in heard + silent)

    walked = await pages(stack, key, limit=5)
    assert [e["id"] for e in walked] == everyone
    states = {e["id"]: e["state"] for e in walked}
    assert {i for i, s in states.items() if s == "offline"} == {n.node_id for n in silent}
    assert states[heard[11].node_id] == "draining"
    first = next(e for e in walked if e["id"] == heard[0].node_id)
    assert first["name"] == "heard-0" and first["models"][0]["id"] == "m1" and first["operator"]["jobs_served"] == 0
    assert all("operator" not in e for e in walked if e["id"] != heard[0].node_id)  # only the caller's own node

    assert [e["id"] for e in await pages(stack, key, limit=3, model="m1")] == sorted(n.node_id for n in heard[:8])
    assert [e["id"] for e in await pages(stack, key, limit=2, model="m2")] == sorted(n.node_id for n in heard[8:])
    assert await pages(stack, key, model="nobody-has-it") == []
    assert [e["id"] for e in await pages(stack, key, limit=2, state="offline")] == sorted(n.node_id for n in silent)
    assert [e["id"] for e in await pages(stack, key, state="draining")] == [heard[11].node_id]
    assert [e["id"] for e in await pages(stack, key, limit=4, state="online")] == \
        sorted(n.node_id for n in heard[:11])

    r = await stack.client.get("/api/v1/nodes", headers=stack.auth(key))
    assert len(r.json()["nodes"]) == 19 and r.json()["next_cursor"] is None  # default limit 100 holds them all


async def test_bad_page_parameters_are_400_naming_the_parameter(stack):
    key = await stack.key()
    for params, param in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"state": "asleep"}, "state"),
                          ({"cursor": "x" * 201}, "cursor")):
        r = await stack.client.get("/api/v1/nodes", params=params, headers=stack.auth(key))
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"] == "bad_request" and param in r.json()["error_message"]


async def test_first_advertisements_share_one_registration_lookup(stack):
    db = stack.runtime.db
    nodes = [await register_node(db, f"n{i}", max_slots=4) for i in range(30)]
    registrations = NodeRegistrations(db)
    ids = [n.node_id for n in nodes] + [nodes[0].node_id, "node_0badc0ffee00"]
    entries = await registrations.lookup_many(ids)
    assert [e.name if e else None for e in entries] == [f"n{i}" for i in range(30)] + ["n0", None]
    assert all(e.max_slots == 4 and not e.revoked for e in entries[:31])
    assert registrations.queries == 1  # 31 distinct ids, one query
    assert await registrations.lookup_many(ids) == entries and registrations.queries == 1  # then from memory


async def test_node_rows_are_written_only_when_the_advertisement_changes(stack):
    db = stack.runtime.db
    writer = stack.runtime.heartbeats.writer
    node = await register_node(db, "steady", models=("*",))
    nc = await nats.connect(stack.nats_url)

    async def advertise(**kw) -> None:
        await nc.publish(subjects.node_advertise(node.node_id), protocol.encode(advert(node, **kw)))
        await nc.flush()

    async def stored():
        rows = [r for r in await db.fetchall("list_nodes") if r["id"] == node.node_id]
        return rows[0]["last_advertisement"]

    try:
        await advertise(active=0)
        await wait_until(stored, timeout=30, message="first advertisement never stored")
        written = writer.rows_written
        for active in (1, 2, 0, 1):  # busy-ness changes every heartbeat: nothing to write
            await advertise(active=active)
        await advertise(models=("m1", "m2"))  # a model appeared: written

        async def has_m2():
            ad = await stored()
            return [m["name"] for m in ad["models"]] == ["m1", "m2"]
        await wait_until(has_m2, timeout=30, message="the changed advertisement was never stored")
        assert writer.rows_written == written + 1
        assert "token" not in await stored()
    finally:
        await nc.close()


async def test_a_repeated_advertisement_refreshes_the_node_and_a_changed_one_is_seen_in_full(stack):
    db, registry, handler = stack.runtime.db, stack.runtime.registry, stack.runtime.heartbeats
    node = await register_node(db, "repeater", models=("*",), max_slots=2)
    capped = await register_node(db, "capped", models=("*",), max_slots=1)
    nc = await nats.connect(stack.nats_url)

    async def advertise(who, sent_at: float, **kw) -> None:
        ad = advert(who, **kw)
        await nc.publish(subjects.node_advertise(who.node_id), protocol.encode(
            msgspec.structs.replace(ad, sent_at=sent_at)))
        await nc.flush()

    try:
        await advertise(node, 1.0)
        await wait_until(lambda: registry.get(node.node_id), timeout=30, message="first advertisement never seen")
        repeats, seen = handler.repeats, registry.get(node.node_id).last_seen
        await advertise(node, 2.0)  # the same again, sent later: liveness moves, nothing else
        await wait_until(lambda: registry.get(node.node_id).last_seen > seen, timeout=30,
                         message="a repeated advertisement did not refresh the node")
        assert handler.repeats == repeats + 1
        assert registry.get(node.node_id).state == "online"
        key = await stack.key("lister")

        async def listed() -> dict:
            r = await stack.client.get("/api/v1/nodes", params={"limit": 10}, headers=stack.auth(key))
            assert r.status_code == 200, r.text
            return next(n for n in r.json()["nodes"] if n["id"] == node.node_id)
        shown = await listed()
        assert [m["id"] for m in shown["models"]] == ["m1"] and shown["state"] == "online"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", shown["last_seen"])
        assert shown["last_seen"] <= datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

        await advertise(node, 3.0, models=("m1", "m2"))  # a model appeared: seen, placed, listed, stored
        await wait_until(lambda: "m2" in registry.get(node.node_id).models, timeout=30,
                         message="a changed advertisement was not seen")
        assert handler.repeats == repeats + 1
        assert [n for _, n in registry.ranked("m2", 5)] == [node.node_id]
        assert [m["id"] for m in (await listed())["models"]] == ["m1", "m2"]

        async def stored_m2():
            rows = [r for r in await db.fetchall("list_nodes") if r["id"] == node.node_id]
            ad = rows[0]["last_advertisement"] if rows else None
            return ad is not None and [m["name"] for m in ad["models"]] == ["m1", "m2"]
        await wait_until(stored_m2, timeout=30, message="the changed advertisement was never stored")

        # A node whose advertisement the registration bounds (2 slots claimed, 1 allowed) is checked every time.
        await advertise(capped, 1.0)
        await wait_until(lambda: registry.get(capped.node_id), timeout=30, message="capped node never seen")
        repeats = handler.repeats
        seen = registry.get(capped.node_id).last_seen
        await advertise(capped, 2.0)
        await wait_until(lambda: registry.get(capped.node_id).last_seen > seen, timeout=30,
                         message="the capped node's second advertisement was not seen")
        assert registry.get(capped.node_id).slots == 1 and handler.repeats == repeats

        # Revoked: the same advertisement again is refused, not taken as a repeat.
        await revoke_everywhere(stack.runtime, node.node_id)
        assert registry.get(node.node_id).state == "offline"
        await advertise(node, 4.0, models=("m1", "m2"))
        await advertise(capped, 3.0)  # a later message on the same connection: the revoked one was handled
        await wait_until(lambda: registry.get(capped.node_id).last_seen > seen, timeout=30,
                         message="the capped node's third advertisement was not seen")
        await wait_until(lambda: not handler._unverified and (handler._verifying is None or handler._verifying.done()),
                         timeout=30, message="the registration lookup never finished")
        assert registry.get(node.node_id).state == "offline" and handler.repeats == repeats
    finally:
        await nc.close()
