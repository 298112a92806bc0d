"""A clean shutdown is quiet: stopping a node agent and a control plane logs no `nats_disconnected` warning
(that warning means NATS went away and a reconnect is under way, which is not what happened). And it ends, even
when a background task loses its cancellation."""

from __future__ import annotations

import asyncio

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


async def test_the_control_plane_stops_even_when_a_background_loop_loses_its_cancellation(nats_url, database_url):
    """A loop that loses one cancellation (Python 3.11's wait_for drops one that lands with a wake-up; this one
    catches it outright) runs on; the control plane's stop cancels again until every task has ended. Cancelled
    once and awaited without bound, this stop never returned."""
    s = await Stack(nats_url, database_url).start()
    lost = asyncio.Event()

    async def loop_that_loses_one_cancellation():
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost.is_set():
                    raise
                lost.set()

    s.runtime.tasks.append(asyncio.create_task(loop_that_loses_one_cancellation()))
    with capture_logs() as logs:
        await asyncio.wait_for(s.stop(), timeout=60)
    assert lost.is_set() and "control_plane_stopped" in [e["event"] for e in logs]
