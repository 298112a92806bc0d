"""The results path heals: a missing results stream is recreated, and /readyz says not ready until it is."""

from __future__ import annotations

import nats
from nats.js.api import StreamConfig

from protocol import subjects
from tests.fixtures.waiting import wait_until
from tests.security.rogue import MODEL


async def test_a_deleted_results_stream_is_recreated_and_readyz_tells_meanwhile(stack, double):
    double.stall_after = None
    key = await stack.ready(double, MODEL)
    nc = await nats.connect(stack.nats_url)  # an operator's mistake, made with a control plane's identity
    js = nc.jetstream()
    try:
        await js.delete_stream(subjects.RESULTS_STREAM)
        # Something else now captures the results subjects, so recreating the stream fails for a while.
        await js.add_stream(StreamConfig(name="BLOCKER", subjects=[subjects.all_job_results()]))

        async def readyz(status: int, results: str):
            r = await stack.client.get("/readyz")
            return r.status_code == status and r.json()["results"] == results
        await wait_until(lambda: readyz(503, "recovering"), timeout=30, message="readyz never said not ready")
        await js.delete_stream("BLOCKER")
        await wait_until(lambda: readyz(200, "ok"), timeout=60, message="the results path never healed")
        info = await js.stream_info(subjects.RESULTS_STREAM)
        assert info.config.subjects == [subjects.all_job_results()]
    finally:
        await nc.close()
    job = await stack.wait_job(key, (await stack.submit(key, model=MODEL)).json()["id"])
    assert job["status"] == "completed" and job["result"]["content"]
