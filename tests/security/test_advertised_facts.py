"""Attack 3: a node with valid credentials advertises 64 slots, 99,999 tokens/s and a model it was not
registered for. What counts is bounded by the registration (slots, models); placement ranks by the tokens/s
the control plane measured itself (control_plane/trust, tested there)."""

from __future__ import annotations

import msgspec

import protocol
from control_plane.nodes.service import register_node
from protocol import subjects
from tests.security.rogue import MODEL, assert_anonymous_refused, connect_as_node
from tests.fixtures.waiting import wait_until


async def test_3_anonymous_cannot_connect_to_advertise(stack):
    await assert_anonymous_refused(stack.nats_url)


async def test_3_a_node_cannot_claim_more_slots_or_models_than_registered(stack, double):
    double.stall_after = None
    key = await stack.key("alice")
    honest = await stack.add_node(double.url, name="honest", slots=4)
    await stack.wait_nodes_serving(MODEL)
    registered = await register_node(stack.runtime.db, "impostor", max_slots=2, models=("llama3.2:*",))
    rogue = await connect_as_node(stack.nats_url, registered.token, registered.node_id)
    ad = protocol.Advertisement(
        node_id=registered.node_id, agent_version="0", engine="ollama", state="online", slots=64, active_jobs=0,
        interval_s=60.0, boot_id="impostor",
        models=(protocol.ModelInfo(MODEL, loaded=True, tokens_per_second=99_999.0),
                protocol.ModelInfo("invented:1b", loaded=True, tokens_per_second=99_999.0)))
    await rogue.publish(subjects.node_advertise(registered.node_id), protocol.encode(ad))
    view = await wait_until(lambda: stack.runtime.registry.get(registered.node_id), timeout=30,
                            message="the impostor's advertisement was never admitted")
    assert view.slots == 2  # its registration's limit, not 64
    assert set(view.models) == {MODEL}  # the model outside its registration is not counted
    # A job for the model only the impostor claimed is refused, as for a model nobody has.
    r = await stack.submit(key, model="invented:1b")
    assert r.status_code == 404 and r.json()["error"] == "model_not_found", r.text


async def test_3_repeating_an_advertisement_does_not_carry_an_over_claim_past_the_registration(stack, double):
    """Repeated advertisements take a short path: a node first advertises within its registration (so repeats
    are accepted as they are), then escalates to 64 slots and an invented model and repeats that. Every repeat
    is still bounded by the registration."""
    key = await stack.key("alice")
    registered = await register_node(stack.runtime.db, "escalator", max_slots=2, models=("llama3.2:*",))
    rogue = await connect_as_node(stack.nats_url, registered.token, registered.node_id)
    honest = protocol.Advertisement(
        node_id=registered.node_id, agent_version="0", engine="ollama", state="online", slots=2, active_jobs=0,
        interval_s=60.0, boot_id="escalator", models=(protocol.ModelInfo(MODEL, loaded=True),))
    await rogue.publish(subjects.node_advertise(registered.node_id), protocol.encode(honest))
    await wait_until(lambda: stack.runtime.registry.brief(registered.node_id), timeout=30,
                     message="the node's first advertisement was never admitted")
    for i in (1, 2):  # its first one was checked in full: these repeat it
        await rogue.publish(subjects.node_advertise(registered.node_id), protocol.encode(
            msgspec.structs.replace(honest, sent_at=float(i))))
    await wait_until(lambda: stack.runtime.heartbeats.repeats >= 2, timeout=30,
                     message="the node's repeated advertisements never took the short path")
    escalated = msgspec.structs.replace(honest, slots=64, models=(
        protocol.ModelInfo(MODEL, loaded=True, tokens_per_second=99_999.0),
        protocol.ModelInfo("invented:1b", loaded=True, tokens_per_second=99_999.0)))
    for i in range(3, 8):
        await rogue.publish(subjects.node_advertise(registered.node_id), protocol.encode(
            msgspec.structs.replace(escalated, sent_at=float(i))))
    # A last one that differs (a label) marks the end: the bus delivers one publisher's messages in order, so once
    # it is seen every repeat before it was handled (a repeat leaves the node's stored advertisement as it was).
    await rogue.publish(subjects.node_advertise(registered.node_id), protocol.encode(
        msgspec.structs.replace(escalated, sent_at=8.0, labels={"seq": "last"})))
    await wait_until(lambda: (b := stack.runtime.registry.brief(registered.node_id)) and b.ad.labels.get("seq"),
                     timeout=30, message="the escalated advertisements were never observed")
    view = stack.runtime.registry.get(registered.node_id)
    assert view.slots == 2  # its registration's limit, not 64
    assert set(view.models) == {MODEL}  # the invented model is not counted
    r = await stack.submit(key, model="invented:1b")
    assert r.status_code == 404 and r.json()["error"] == "model_not_found", r.text


async def test_3_a_node_changing_its_interval_every_advertisement_leaves_nothing_behind(stack, double):
    """Every distinct interval is its own offline window in the registry; a node that advertises a new one each
    time (here 300) must not leave a trail of them for every liveness check to read, and serving goes on."""
    double.stall_after = None
    key = await stack.key("alice")
    await stack.add_node(double.url, name="honest", slots=2)
    await stack.wait_nodes_serving(MODEL)
    registered = await register_node(stack.runtime.db, "wobbler", max_slots=2, models=("llama3.2:*",))
    rogue = await connect_as_node(stack.nats_url, registered.token, registered.node_id)
    ad = protocol.Advertisement(
        node_id=registered.node_id, agent_version="0", engine="ollama", state="online", slots=2, active_jobs=0,
        boot_id="wobbler", models=(protocol.ModelInfo(MODEL, loaded=True),))
    for i in range(300):
        await rogue.publish(subjects.node_advertise(registered.node_id), protocol.encode(
            msgspec.structs.replace(ad, interval_s=2.0 + i / 100, sent_at=float(i))))
    await wait_until(lambda: (v := stack.runtime.registry.get(registered.node_id)) and v.interval_s == 4.99,
                     timeout=30, message="the node's advertisements were never all observed")
    registry = stack.runtime.registry
    # One window per interval in use: the honest node's and the wobbler's latest, none of the 299 before.
    assert len(registry._watch) == 2 and all(registry._watch.values()), list(registry._watch)
    assert registry.online_count() == 2
    r = await stack.submit(key, model=MODEL)
    assert r.status_code == 200, r.text
    job = await stack.wait_job(key, r.json()["id"])
    assert job["status"] == "completed", job
