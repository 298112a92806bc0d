"""Model claims are verified by measurement: a node registered without `--model` serves a model only once a
known-answer probe against a node the control plane already trusts for it agreed (control_plane/trust/claims.py).
Real nats-server, PostgreSQL and node agents beside Ollama doubles; assertions on what a user sees."""

from __future__ import annotations

import protocol
from control_plane.nodes.service import register_node
from control_plane.scheduler.registry import NodeRegistry
from control_plane.trust.claims import ModelClaims
from protocol import subjects
from tests.doubles.ollama_double import OllamaDouble
from tests.fixtures.waiting import wait_until
from tests.security.rogue import GENUINE, GENUINE_TEXT, MODEL, connect_as_node

PROBE_PROMPT = "Write one short sentence about"


async def claim_state(stack, node_id: str, model: str) -> str | None:
    """The claim as PostgreSQL keeps it (what every replica reads, and a restarted one starts from)."""
    rows = await stack.runtime.db.fetchall("model_claims_changed_since", {"since": None})
    return next((r["state"] for r in rows if r["node_id"] == node_id and r["model"] == model), None)


async def test_an_invented_model_claimed_by_a_node_registered_without_patterns_gets_no_job(stack, double):
    double.stall_after = None
    key = await stack.key("alice")
    await stack.add_node(double.url, name="honest")  # the admin vouches for it (models '*')
    await stack.wait_nodes_serving(MODEL)
    registered = await register_node(stack.runtime.db, "inventor")  # no --model: its claims are measured
    rogue = await connect_as_node(stack.nats_url, registered.token, registered.node_id)
    try:
        ad = protocol.Advertisement(
            node_id=registered.node_id, agent_version="0", engine="ollama", state="online", slots=4, active_jobs=0,
            interval_s=60.0, boot_id="inventor",
            models=(protocol.ModelInfo("invented:1b", loaded=True, tokens_per_second=99_999.0),))
        await rogue.publish(subjects.node_advertise(registered.node_id), protocol.encode(ad))
        view = await wait_until(lambda: stack.runtime.registry.get(registered.node_id), timeout=30,
                                message="the inventor's advertisement was never admitted")
        assert "invented:1b" not in view.models
        # Nothing can measure a model no trusted node serves: the claim is never verified, so the user sees the
        # contract's unknown-model answer, for the network and for a job pinned to the node.
        r = await stack.submit(key, model="invented:1b")
        assert r.status_code == 404 and r.json()["error"] == "model_not_found", r.text
        r = await stack.submit(key, model="invented:1b", node_id=registered.node_id)
        assert r.status_code == 404 and r.json()["error"] == "model_not_found", r.text
        assert stack.runtime.trust.claims.state(registered.node_id, "invented:1b") is None
        assert await claim_state(stack, registered.node_id, "invented:1b") is None
    finally:
        await rogue.nc.close()


async def test_an_honest_nodes_real_model_is_served_once_a_probe_verified_it(stack, double):
    # The reference (trusted) node's engine holds every answer after its first token until released, so the
    # newcomer's claim stays unverified until the test lets the measurement finish.
    key = await stack.key("alice")
    await stack.add_node(double.url, name="trusted", slots=2)
    await stack.wait_nodes_serving(MODEL)
    async with OllamaDouble(models=[MODEL], tokens=GENUINE) as engine:
        newcomer = await stack.add_node(engine.url, name="newcomer", models=None)
        await wait_until(lambda: stack.runtime.trust.claims.state(newcomer.node_id, MODEL) == "pending", timeout=30,
                         message="the newcomer's claim was never measured")
        assert MODEL not in stack.runtime.registry.get(newcomer.node_id).models
        r = await stack.submit(key, model=MODEL, node_id=newcomer.node_id)
        assert r.status_code == 404 and r.json()["error"] == "model_not_found", r.text

        double.stall_after = None
        double.release()  # the reference answers; the same job then runs on the newcomer and agrees
        await wait_until(lambda: MODEL in (stack.runtime.registry.get(newcomer.node_id).models or {}), timeout=30,
                         message="the verified claim was never served")
        restarted = ModelClaims(stack.runtime.db, NodeRegistry(), stack.settings, probe=None)
        await restarted.start()  # what another replica, or this one after a restart, starts from
        assert restarted.verified(newcomer.node_id, MODEL)
        assert stack.runtime.trust.view(newcomer.node_id).probes_passed == 1

        r = await stack.submit(key, model=MODEL, node_id=newcomer.node_id, stream=False)
        assert r.status_code in (200, 201, 202), r.text
        job = await stack.wait_job(key, r.json()["id"])
        assert job["status"] == "completed" and job["node_id"] == newcomer.node_id, job
        assert job["result"]["content"] == GENUINE_TEXT


async def test_a_node_answering_garbage_for_a_real_model_fails_verification_and_never_serves_it(stack, double):
    double.stall_after = None
    key = await stack.key("alice")
    honest = await stack.add_node(double.url, name="honest", slots=2)
    await stack.wait_nodes_serving(MODEL)
    async with OllamaDouble(models=[MODEL], dishonest=True) as garbage:
        liar = await stack.add_node(garbage.url, name="liar", slots=4, models=None)
        await wait_until(lambda: stack.runtime.trust.claims.state(liar.node_id, MODEL) == "failed", timeout=30,
                         message="the liar's claim was never settled")
        assert await claim_state(stack, liar.node_id, MODEL) == "failed"
        trust = stack.runtime.trust.view(liar.node_id)
        assert trust.probes_failed == 1 and trust.reputation < 0.8  # counted against it (a new node is at 0.8)
        assert MODEL not in stack.runtime.registry.get(liar.node_id).models

        r = await stack.submit(key, model=MODEL, node_id=liar.node_id)
        assert r.status_code == 404 and r.json()["error"] == "model_not_found", r.text
        jobs = []
        for _ in range(4):  # more jobs than the honest node has slots: the liar still gets none
            r = await stack.submit(key, model=MODEL)
            assert r.status_code in (200, 201, 202), r.text
            jobs.append(r.json()["id"])
        for job_id in jobs:
            job = await stack.wait_job(key, job_id)
            assert job["status"] == "completed" and job["node_id"] == honest.node_id, job
            assert job["result"]["content"] == GENUINE_TEXT
        # The only chat the liar's engine ever saw was the probe: no user prompt reached it.
        chats = [r for r in garbage.requests if r.path == "/api/chat"]
        assert chats and all(PROBE_PROMPT in str(r.body) for r in chats), [r.body for r in chats]


async def test_two_replicas_measure_a_claim_once_and_both_serve_it(stack, double, nats_url, database_url):
    """One replica takes the measurement (PostgreSQL decides which); the other learns the verdict from the
    database and serves the model too, without probing the node a second time."""
    from tests.harness import Stack

    double.stall_after = None
    other = await Stack(nats_url, database_url).start()  # a second replica: own bus identity, same database
    try:
        await stack.add_node(double.url, name="trusted")
        await stack.wait_nodes_serving(MODEL)
        await other.wait_nodes_serving(MODEL)
        async with OllamaDouble(models=[MODEL], tokens=GENUINE) as engine:
            newcomer = await stack.add_node(engine.url, name="newcomer", models=None)
            for replica in (stack, other):
                await wait_until(lambda r=replica: MODEL in getattr(r.runtime.registry.get(newcomer.node_id),
                                                                    "models", {}),
                                 timeout=30, message="a replica never served the verified claim")
            probes = [r for r in engine.requests if r.path == "/api/chat"]
            assert len(probes) == 1 and PROBE_PROMPT in str(probes[0].body), [r.body for r in probes]
            key = await other.key("alice")
            r = await other.submit(key, model=MODEL, node_id=newcomer.node_id, stream=False)
            job = await other.wait_job(key, r.json()["id"])
            assert job["status"] == "completed" and job["node_id"] == newcomer.node_id, job
    finally:
        await other.stop()


async def test_an_admin_vouches_for_a_registered_nodes_models_with_the_cli(stack):
    """`nodes set-models NODE --model GLOB` changes what the registration vouches for (no patterns: measure all)."""
    import asyncio
    import sys

    from control_plane.nodes.service import NodeRegistrations

    registered = await register_node(stack.runtime.db, "old-box")  # e.g. registered before claims were measured

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control_plane.cli", "nodes", "set-models", *args,
            "--database-url", stack.database_url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
        return proc.returncode, out.decode()

    code, out = await cli("old-box", "--model", "llama3.2:*")
    assert code == 0 and registered.node_id in out and "llama3.2:*" in out, out
    entry = await NodeRegistrations(stack.runtime.db).lookup(registered.node_id)
    assert entry.trusts(MODEL) and not entry.trusts("qwen2.5:7b")
    code, out = await cli(registered.node_id)  # by id, no --model: every claim is measured again
    assert code == 0 and "none" in out, out
    assert not (await NodeRegistrations(stack.runtime.db).lookup(registered.node_id)).trusts(MODEL)
    code, out = await cli("no-such-node", "--model", "*")
    assert code == 1 and "no node 'no-such-node'" in out, out
