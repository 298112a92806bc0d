"""A node with valid credentials against other nodes' work and against its own past: it reads no other node's
assignments, and replaying an old result of its own changes nothing a user sees."""

from __future__ import annotations

import protocol
from protocol import subjects
from tests.security.rogue import GENUINE_TEXT, MODEL, connect_as_node, rogue_node, settle
from tests.fixtures.waiting import wait_until
from tests.security.test_bus_attacks import assert_genuine, finish, honest_job


async def test_a_node_cannot_read_another_nodes_assignments(stack, double):
    rogue = await rogue_node(stack)
    key = await stack.key("alice")
    honest = await stack.add_node(double.url, name="honest")
    await stack.wait_nodes_serving(MODEL)
    for subject in (subjects.node_assign(honest.node_id), subjects.node_cancel(honest.node_id),
                    "infernet.v1.node.*.assign"):
        await rogue.try_subscribe(subject)
    assert len(await rogue.violations(3)) == 3
    r = await stack.submit(key, model=MODEL, messages=[{"role": "user", "content": "my private prompt"}])
    job_id = r.json()["id"]
    await stack.wait_job(key, job_id, statuses=("processing",))
    await wait_until(lambda: double.active_streams >= 1, timeout=30, message="the engine never started the job")
    job = await finish(stack, double, key, job_id)
    await settle(stack, rogue)
    assert rogue.received == []  # the prompt never reached it
    assert_genuine(stack, job, honest.node_id)


async def test_replaying_an_old_result_of_its_own_changes_nothing(stack, double):
    """The honest node's operator keeps a copy of a finished job's result (lease included) and publishes it
    again: for the same job (after it was recorded), and as the result of its next job."""
    key, honest, first_id = await honest_job(stack, double)
    first = await finish(stack, double, key, first_id)
    assert_genuine(stack, first, honest.node_id)
    old_lease = (await stack.runtime.db.fetchone("get_job_any", {"id": first_id}))["lease"]
    r = await stack.submit(key, model=MODEL)
    second_id = r.json()["id"]
    await stack.wait_job(key, second_id, statuses=("processing",))
    await wait_until(lambda: double.active_streams >= 1, timeout=30, message="the engine never started the job")

    replayer = await connect_as_node(stack.nats_url, honest.agent.settings.node_token, honest.node_id)
    js = replayer.nc.jetstream()
    for job_id in (first_id, second_id):
        replay = protocol.JobResult(job_id=job_id, attempt=1, lease=old_lease, node_id=honest.node_id,
                                    content="REPLAYED", usage=protocol.Usage(5, 400, 405))
        await js.publish(subjects.node_job_result(honest.node_id, job_id), protocol.encode(replay),
                         headers={"Nats-Msg-Id": f"replay-{job_id}"})
    await replayer.nc.close()
    second = await finish(stack, double, key, second_id)
    assert_genuine(stack, second, honest.node_id)
    again = await stack.wait_job(key, first_id)
    assert again["result"]["content"] == GENUINE_TEXT and again["credits_charged"] == first["credits_charged"]
