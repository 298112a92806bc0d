"""Dead in a second: a SIGKILLed node is known lost from the NATS server's disconnect event, not from missed
heartbeats. With advertisements 60 s apart, heartbeat expiry would take 3 minutes; the job must move on
well within the wait below."""

from __future__ import annotations

import httpx

from tests.e2e.cluster import auth, node_id_of, wait_job, wait_model

#: Far longer than the wait: a SIGKILLed node is offline by heartbeats only after 3 of these.
INTERVAL_S = 60
#: The wait for the re-placed job to complete: a third of one advertisement interval.
WAIT_S = 20


async def test_a_sigkilled_node_is_lost_from_the_server_event_and_its_job_completes_elsewhere(cluster):
    _, stalls = cluster.start_double("qwen2.5:7b", "--stall-after", "2", name="ollama-stalls")
    _, answers = cluster.start_double("qwen2.5:7b", name="ollama-answers")
    key = cluster.key()
    token_a, token_b = cluster.register_node("a"), cluster.register_node("b")
    cp, url = cluster.start_control_plane()
    node_a = cluster.start_node(token_a, stalls, name="node-a", interval=INTERVAL_S)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await wait_model(client, key, "qwen2.5:7b")
        r = await client.post("/api/v1/jobs", headers=auth(key),
                              json={"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]})
        job_id = r.json()["id"]
        job = await wait_job(client, key, job_id, statuses=("processing",))
        assert job["node_id"] == node_id_of(token_a)
        cluster.start_node(token_b, answers, name="node-b", interval=INTERVAL_S)
        await wait_model(client, key, "qwen2.5:7b", nodes=2)
        node_a.kill()  # SIGKILL mid-job
        job = await wait_job(client, key, job_id, timeout=WAIT_S)
    assert job["status"] == "completed" and job["node_id"] == node_id_of(token_b), job
    assert '"node_disconnected"' in cp.log_text()
