"""A replica that loses PostgreSQL under an open native stream ends it with an SSE `error` event (the documented
code, no driver text) rather than cutting the connection."""

from __future__ import annotations

from tests.doubles.ollama_double import OllamaDouble
from tests.sse import collect

MODEL = "qwen2.5:7b"


async def test_losing_postgresql_mid_stream_sends_an_error_event(stack):
    async with OllamaDouble(models=[MODEL], token_count=20, stall_after=3) as d:
        key = await stack.key()
        await stack.add_node(d.url)
        await stack.wait_nodes_serving(MODEL)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
        async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
            assert r.status_code == 200
            await d.wait_active(1)
            await stack.runtime.db.close()  # PostgreSQL gone for this replica
            d.configure(stall_after=None)
            d.release()  # the job ends; recording it and reading its final row need the database
            events = await collect(r)
    last = events[-1]
    assert last.event == "error", [e.event for e in events]
    assert last.json()["error"] == "service_unavailable"
    assert "reconnect with Last-Event-ID" in last.json()["error_message"]
    assert "pool" not in last.data and "PostgreSQL unavailable" not in last.data
