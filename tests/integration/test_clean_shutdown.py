"""A clean shutdown is quiet: stopping a node agent and a control plane logs no `nats_disconnected` warning
(that warning means NATS went away and a reconnect is under way, which is not what happened)."""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.harness import Stack


async def test_stopping_the_stack_logs_no_reconnect_warning(nats_url, database_url, double):
    s = await Stack(nats_url, database_url).start()
    try:
        await s.add_node(double.url)
        await s.wait_nodes_serving("qwen2.5:7b")
    finally:
        with capture_logs() as logs:
            await s.stop()
    events = [e["event"] for e in logs]
    assert "nats_disconnected" not in events, logs
    assert "nats_closed" in events and "control_plane_stopped" in events  # the shutdown was seen
