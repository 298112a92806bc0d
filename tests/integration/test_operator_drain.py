"""Operators may drain their own nodes over the API (as the console lets them), never someone else's."""

from __future__ import annotations

from tests.fixtures.waiting import wait_until


async def test_an_operator_drains_their_own_node_but_not_another_operators(stack, double):
    theirs = await stack.add_node(double.url, name="theirs", operator="gpu-co")
    other = await stack.add_node(double.url, name="other", operator="other-co")
    await stack.wait_nodes_serving("qwen2.5:7b", 2)
    operator = await stack.key("gpu-co")

    r = await stack.client.post(f"/api/v1/nodes/{other.node_id}/drain", headers=stack.auth(operator))
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    assert stack.runtime.registry.get(other.node_id).state == "online"
    r = await stack.client.post("/api/v1/nodes/node_0000000000ff/drain", headers=stack.auth(operator))
    assert r.status_code == 403  # an unknown node is not theirs either: no probing of which ids exist

    r = await stack.client.post(f"/api/v1/nodes/{theirs.node_id}/drain", headers=stack.auth(operator))
    assert r.status_code == 202 and r.json() == {"node_id": theirs.node_id, "state": "draining"}
    await wait_until(lambda: theirs.task.done(), timeout=30, message="the drained node never stopped")
    assert stack.runtime.registry.get(other.node_id).state == "online"
