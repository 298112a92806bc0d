"""A node cannot choose what the server publishes on other subjects: a message a node stores in a stream may name
any reply subject, and JetStream sends its acknowledgement there. A rogue aims those acknowledgements at another
node's assign, cancel and drain subjects, at a live job's token and result subjects, at advertisements and at the
JetStream API: the acknowledgements arrive (their content is the server's, not the rogue's) and change nothing a
user sees: the stream's text, the job's content, status and charge, the honest node's service."""

from __future__ import annotations

import nats

from protocol import subjects
from tests.fixtures.waiting import wait_until
from tests.security.rogue import GENUINE_TEXT, MODEL, live_stream
from tests.security.test_bus_attacks import assert_genuine
from tests.sse import tokens


async def test_acknowledgements_reflected_onto_other_subjects_change_nothing_a_user_sees(stack, double):
    async with live_stream(stack, double, "token") as live:  # the honest node's first token (then its engine holds)
        key, honest, rogue, reader, events, job_id = (live.key, live.honest, live.rogue, live.reader, live.events,
                                                      live.job_id)
        targets = [subjects.node_assign(honest.node_id), subjects.node_cancel(honest.node_id),
                   subjects.node_drain(honest.node_id), subjects.node_advertise(honest.node_id),
                   subjects.node_job_tokens(honest.node_id, job_id), subjects.node_job_result(honest.node_id, job_id),
                   "$JS.API.STREAM.DELETE.INFERNET_RESULTS", "$JS.API.STREAM.PURGE.INFERNET_TOKENS"]
        stored_on = [subjects.node_job_tokens(rogue.node_id, job_id), subjects.node_job_result(rogue.node_id, job_id)]
        acks: list = []

        async def ack_seen(msg) -> None:
            acks.append(msg.data)

        # A connection of its own with the control plane's identity (a node could not) sees where the
        # acknowledgements land; flushed, so the server has the subscription before the rogue's first message.
        watcher = await nats.connect(stack.nats_url)
        try:
            await watcher.subscribe(subjects.node_assign(honest.node_id), cb=ack_seen)
            await watcher.flush()
            for stored in stored_on:
                for target in targets:
                    await rogue.nc.publish(stored, b"{}", reply=target)
            await rogue.nc.flush()
            await wait_until(lambda: len(acks) >= len(stored_on), timeout=30,
                             message="the server delivered no reflected acknowledgement (the attack did not happen)")
        finally:
            await watcher.close()
        assert all(b'"stream"' in a for a in acks)  # the server's acknowledgement, no content of the rogue's
        double.release()
        rest = [e async for e in reader.events()]
    text = "".join(t for _, t in tokens(events + rest))
    assert text == GENUINE_TEXT and rest[-1].event == "done", [e.event for e in rest]
    job = await stack.wait_job(key, job_id)
    assert_genuine(stack, job, honest.node_id)
    # Nothing was deleted or purged, and the honest node still serves (it was neither drained nor cancelled).
    names = {s.config.name async for s in _streams(stack)}
    assert {"INFERNET_RESULTS", "INFERNET_TOKENS"} <= names
    double.stall_after = None  # the next answer runs straight through
    again = await stack.submit(key, model=MODEL)
    job2 = await stack.wait_job(key, again.json()["id"])
    assert_genuine(stack, job2, honest.node_id)


async def _streams(stack):
    for info in await stack.runtime.bus.nc.jsm().streams_info():
        yield info
