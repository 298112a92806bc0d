"""Revoking a node: its live bus connections close at once, it cannot reconnect, and its jobs move on."""

from __future__ import annotations

import pytest

from tests.doubles.ollama_double import OllamaDouble
from tests.fixtures.waiting import wait_until
from tests.security.rogue import GENUINE_TEXT, MODEL, connect_as_node, rogue_node


async def test_a_revoked_node_is_disconnected_and_refused_on_reconnect(stack):
    admin = await stack.key("root", admin=True)
    rogue = await rogue_node(stack)
    assert rogue.nc.is_connected
    user = await stack.key("alice")
    r = await stack.client.post(f"/api/v1/nodes/{rogue.node_id}/revoke", headers=stack.auth(user))
    assert r.status_code == 403  # only an admin revokes
    r = await stack.client.post(f"/api/v1/nodes/{rogue.node_id}/revoke", headers=stack.auth(admin))
    assert r.status_code == 200, r.text
    assert r.json() == {"node_id": rogue.node_id, "name": "rogue", "revoked": True, "disconnected": 1}
    await wait_until(lambda: not rogue.nc.is_connected, timeout=10, message="the revoked node is still connected")
    with pytest.raises(Exception, match="Authorization Violation"):
        await connect_as_node(stack.nats_url, rogue.token, rogue.node_id)


async def test_a_revoked_nodes_running_job_is_re_placed_and_its_late_result_ignored(stack, double):
    """A node revoked mid-job: the job completes on another node; when the revoked node's engine finishes, its
    result never reaches the job (the node is off the bus)."""
    admin, key = await stack.key("root", admin=True), await stack.key("alice")
    revoked = await stack.add_node(double.url, name="revoked")
    await stack.wait_nodes_serving(MODEL)
    job_id = (await stack.submit(key, model=MODEL)).json()["id"]
    await stack.wait_job(key, job_id, statuses=("processing",))
    async with OllamaDouble(models=[MODEL], tokens=("Another", " node.")) as other_double:
        other = await stack.add_node(other_double.url, name="other")
        await stack.wait_nodes_serving(MODEL, count=2)
        r = await stack.client.post(f"/api/v1/nodes/{revoked.node_id}/revoke", headers=stack.auth(admin))
        assert r.status_code == 200 and r.json()["disconnected"] == 1
        job = await stack.wait_job(key, job_id)
        double.release()
        assert job["status"] == "completed" and job["node_id"] == other.node_id, job
        assert job["result"]["content"] == "Another node." != GENUINE_TEXT
        await wait_until(lambda: revoked.node_id not in revoked.agent.jobs, timeout=30)
        again = await stack.wait_job(key, job_id)
        assert again["result"]["content"] == "Another node." and again["credits_charged"] == job["credits_charged"]
        assert revoked.agent.nc is not None and not revoked.agent.nc.is_connected
