"""Token streams over real processes when a node is SIGKILLed: re-placed if no token reached the client yet,
failed with node_lost (never silently re-run) once one did."""

from __future__ import annotations

import json

import httpx

from tests.e2e.cluster import auth, node_id_of, wait_job, wait_model

MODEL = "qwen2.5:7b"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "a long story"}], "stream": True}


async def events(response: httpx.Response):
    """(event, id, data) of an SSE response, as they arrive."""
    name, ident, data = "message", None, []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield name, ident, json.loads("\n".join(data))
            name, ident, data = "message", None, []
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])


async def test_node_killed_after_the_first_token_fails_the_job_and_ends_the_stream(cluster):
    _, engine = cluster.start_double(MODEL, "--stall-after", "3", "--delay-ms", "8", name="ollama-stalls")
    key = cluster.key()
    token = cluster.register_node("a")
    _, url = cluster.start_control_plane()
    node = cluster.start_node(token, engine, name="node-a")
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await wait_model(http, key, MODEL)
        seen = []
        async with http.stream("POST", "/api/v1/jobs", json=BODY, headers=auth(key)) as r:
            job_id = r.headers["x-job-id"]
            async for name, ident, data in events(r):
                seen.append((name, ident, data))
                if name == "token" and node.running:
                    node.kill()  # SIGKILL: the node vanishes after a token reached this client
        job = await wait_job(http, key, job_id)
    assert seen[-1][0] == "error" and seen[-1][2]["error"] == "node_lost"
    ids = [int(i) for n, i, _ in seen if n == "token"]
    assert ids == list(range(1, len(ids) + 1)) and ids
    assert job["status"] == "failed" and job["error"] == "node_lost" and job["attempt"] == 1
    assert job["time_to_first_token_ms"] >= 0


async def test_node_killed_before_any_token_is_replaced_and_the_stream_shows_the_new_attempt(cluster):
    _, stuck = cluster.start_double(MODEL, "--stall-after", "0", name="ollama-stuck")
    _, fast = cluster.start_double(MODEL, "--token-count", "20", name="ollama-fast")
    key = cluster.key()
    token_a, token_b = cluster.register_node("a"), cluster.register_node("b")
    _, url = cluster.start_control_plane()
    node_a = cluster.start_node(token_a, stuck, name="node-a")
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await wait_model(http, key, MODEL)
        seen = []
        async with http.stream("POST", "/api/v1/jobs", json=BODY, headers=auth(key)) as r:
            job_id = r.headers["x-job-id"]
            stream = events(r)
            seen.append(await anext(stream))  # the `job` event
            await wait_job(http, key, job_id, statuses=("processing",))
            cluster.start_node(token_b, fast, name="node-b")
            await wait_model(http, key, MODEL, nodes=2)
            node_a.kill()
            async for item in stream:
                seen.append(item)
        job = await wait_job(http, key, job_id)
    assert seen[-1][0] == "done"
    done = seen[-1][2]
    assert done["attempt"] == 2 and done["node_id"] == node_id_of(token_b)
    text = "".join(data["text"] for name, _, data in seen if name == "token")
    assert text == done["result"]["content"] and len(text.split()) == 20
    assert job["status"] == "completed" and job["attempt"] == 2
