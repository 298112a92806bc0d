"""The attacks on the bus, performed for real: an anonymous client cannot connect, and a registered node with
valid credentials of its own gets nothing beyond its own subjects. Outcomes are checked where a user sees them:
the job's content and status, the credits charged, the SSE stream's text."""

from __future__ import annotations

import msgspec
import nats
from nats.js.errors import NoStreamResponseError

import protocol
from control_plane.credits.prices import default_price
from control_plane.credits.pricing import cost
from protocol import subjects
from tests.security.rogue import (GENUINE, GENUINE_TEXT, MODEL, assert_anonymous_refused, live_stream, rogue_node,
                                  settle)
from tests.fixtures.waiting import wait_until
from tests.sse import tokens


async def honest_job(stack, double):
    """An honest node and a user's job placed on it, held mid-generation (the double stalls after one token)."""
    key = await stack.key("alice")
    honest = await stack.add_node(double.url, name="honest")
    await stack.wait_nodes_serving(MODEL)
    r = await stack.submit(key, model=MODEL)
    assert r.status_code in (200, 201, 202), r.text
    job_id = r.json()["id"]
    await stack.wait_job(key, job_id, statuses=("processing",))
    # The engine holds the stream (release() only frees streams that are already waiting).
    await wait_until(lambda: double.active_streams >= 1, timeout=30, message="the engine never started the job")
    return key, honest, job_id


async def finish(stack, double, key: str, job_id: str) -> dict:
    double.release()
    return await stack.wait_job(key, job_id)


def assert_genuine(stack, job: dict, honest_node_id: str) -> None:
    """The job ended as the honest node made it: its text, its usage, and the charge for that usage."""
    assert job["status"] == "completed", job
    assert job["node_id"] == honest_node_id
    assert job["result"]["content"] == GENUINE_TEXT
    usage = job["result"]["usage"]
    assert usage["completion_tokens"] == len(GENUINE)
    assert job["credits_charged"] == cost(usage["prompt_tokens"], usage["completion_tokens"],
                                          default_price(stack.settings))


def forged_result(job_id: str, node_id: str) -> bytes:
    return protocol.encode(protocol.JobResult(job_id=job_id, attempt=1, lease="guessed", node_id=node_id,
                                              content="FORGED", usage=protocol.Usage(1, 400, 401)))


# -- 1: subscribe(">") shows prompts, chunks, results and node tokens ----------------------------------
async def test_1_anonymous_cannot_connect_to_read(stack):
    await assert_anonymous_refused(stack.nats_url)


async def test_1_a_node_reads_nothing_but_its_own_subjects(stack, double):
    rogue = await rogue_node(stack)
    for subject in (">", "infernet.>", subjects.all_job_tokens(), subjects.all_job_results(),
                    subjects.advertisements(), "_INBOX.>"):
        await rogue.try_subscribe(subject)
    assert len(await rogue.violations(6)) == 6
    key, honest, job_id = await honest_job(stack, double)
    job = await finish(stack, double, key, job_id)
    await settle(stack, rogue)
    assert rogue.received == []  # no assignment (the prompt), chunk, result or advertisement reached it
    assert_genuine(stack, job, honest.node_id)


async def test_1_advertisements_carry_no_token(stack, double):
    nc = await nats.connect(stack.nats_url)  # a control plane's view: the only identity that may read them
    seen: list[bytes] = []

    async def on_ad(msg) -> None:
        seen.append(msg.data)
    await nc.subscribe(subjects.advertisements(), cb=on_ad)
    try:
        honest = await stack.add_node(double.url, name="honest")
        await wait_until(lambda: seen, timeout=30, message="no advertisement")
    finally:
        await nc.close()
    ad = msgspec.json.decode(seen[-1])
    assert ad["node_id"] == honest.node_id and "token" not in ad
    assert honest.agent.settings.node_token.encode() not in seen[-1]


# -- 2: a forged JobResult completes another user's job, with forged usage ----------------------------
async def test_2_anonymous_cannot_connect_to_publish_results(stack):
    await assert_anonymous_refused(stack.nats_url)


async def test_2_a_node_cannot_complete_a_job_assigned_to_another_node(stack, double):
    key, honest, job_id = await honest_job(stack, double)
    rogue = await rogue_node(stack)
    # On the honest node's subject: the server refuses the publish.
    await rogue.publish(subjects.node_job_result(honest.node_id, job_id), forged_result(job_id, honest.node_id))
    assert await rogue.violations(1)
    # On its own subject (the only one it may use), claiming the honest node or itself: stored in the results
    # stream, then refused by the control plane (the subject names the publisher; the job is not assigned to it).
    js = rogue.nc.jetstream()
    for claimed in (honest.node_id, rogue.node_id):
        ack = await js.publish(subjects.node_job_result(rogue.node_id, job_id), forged_result(job_id, claimed),
                               headers={"Nats-Msg-Id": f"forged-{claimed}"})
        assert ack.stream == subjects.RESULTS_STREAM
    job = await finish(stack, double, key, job_id)
    assert_genuine(stack, job, honest.node_id)


# -- 4: token chunks injected into a user's live SSE stream --------------------------------------------
async def test_4_anonymous_cannot_connect_to_inject_tokens(stack):
    await assert_anonymous_refused(stack.nats_url)


async def test_4_a_node_cannot_inject_text_into_another_nodes_stream(stack, double):
    # up to the honest node's first token (then the double stalls)
    async with live_stream(stack, double, "token") as live:
        key, honest, rogue, reader, events, job_id = (live.key, live.honest, live.rogue, live.reader, live.events,
                                                      live.job_id)
        evil = [protocol.TokenChunk(job_id, 1, seq, " INJECTED", node_id=nid)
                for nid in (honest.node_id, rogue.node_id) for seq in range(1, 6)]
        for chunk in evil[:5]:  # as the honest node, on its subject: refused by the server
            await rogue.publish(subjects.node_job_tokens(honest.node_id, job_id), protocol.encode(chunk))
        assert await rogue.violations(5)
        for chunk in evil:  # on its own subject: accepted by the server, refused by the control plane
            await rogue.publish(subjects.node_job_tokens(rogue.node_id, job_id), protocol.encode(chunk))
        await settle(stack, rogue)
        double.release()
        events += [e async for e in reader.events()]
    text = "".join(t for _, t in tokens(events))
    assert "INJECTED" not in text and text == GENUINE_TEXT
    assert events[-1].event == "done"
    job = await stack.wait_job(key, job_id)
    assert_genuine(stack, job, honest.node_id)


# -- 5: assignments, cancels, drains and advertisements forged for another node --------------------------
async def test_5_anonymous_cannot_connect_to_command_nodes(stack):
    await assert_anonymous_refused(stack.nats_url)


async def test_5_a_node_cannot_assign_cancel_drain_or_advertise_for_another_node(stack, double):
    key, honest, job_id = await honest_job(stack, double)
    rogue = await rogue_node(stack)
    free = protocol.Assignment(job_id="job_free", attempt=1, lease="x", model=MODEL,
                               messages=(protocol.ChatMessage("user", "free inference"),))
    await rogue.publish(subjects.node_assign(honest.node_id), protocol.encode(free))
    await rogue.publish(subjects.node_cancel(honest.node_id), protocol.encode(protocol.Cancel(job_id, 1)))
    await rogue.publish(subjects.node_drain(honest.node_id), protocol.encode(protocol.Drain(honest.node_id)))
    restarted = protocol.Advertisement(node_id=honest.node_id, agent_version="0", engine="ollama", state="online",
                                       slots=1, active_jobs=0, boot_id="forged-restart")
    await rogue.publish(subjects.node_advertise(honest.node_id), protocol.encode(restarted))
    await rogue.publish(subjects.node_advertise(rogue.node_id), protocol.encode(restarted))  # its own subject
    assert len(await rogue.violations(4)) == 4
    job = await finish(stack, double, key, job_id)
    assert_genuine(stack, job, honest.node_id)  # not cancelled, not re-placed
    assert honest.agent.state == "online" and "job_free" not in honest.agent.jobs
    assert [r for r in double.requests if "free inference" in str(r)] == []


# -- 6: the JetStream API: read another job's chunks, delete the results stream --------------------------
async def test_6_anonymous_cannot_connect_to_use_jetstream(stack):
    await assert_anonymous_refused(stack.nats_url)


async def test_6_a_node_has_no_jetstream_api(stack, double):
    key, honest, job_id = await honest_job(stack, double)
    rogue = await rogue_node(stack)
    js = rogue.nc.jetstream(timeout=2)
    for attempt in (js.stream_info(subjects.TOKENS_STREAM), js.delete_stream(subjects.RESULTS_STREAM),
                    js.get_last_msg(subjects.TOKENS_STREAM, subjects.job_tokens(job_id))):
        try:
            await attempt
            raise AssertionError("the JetStream API answered a node")
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, NoStreamResponseError):
            pass
    assert len(await rogue.violations(3)) >= 3
    job = await finish(stack, double, key, job_id)
    assert_genuine(stack, job, honest.node_id)
    # The results stream is still there: a second job completes too.
    r = await stack.submit(key, model=MODEL)
    double.stall_after = None
    assert (await stack.wait_job(key, r.json()["id"]))["status"] == "completed"


# -- 7: nodes.verify tells anyone whether a token is valid -----------------------------------------------
async def test_7_anonymous_cannot_connect_to_ask(stack):
    await assert_anonymous_refused(stack.nats_url)


async def test_7_a_node_can_ask_only_about_itself_and_no_token_is_sent(stack, double):
    honest = await stack.add_node(double.url, name="honest")
    await stack.wait_nodes_serving(MODEL)
    rogue = await rogue_node(stack)
    await rogue.publish(subjects.node_verify(honest.node_id), protocol.encode(protocol.NodeVerify(honest.node_id)))
    assert await rogue.violations(1)
    msg = await rogue.nc.request(subjects.node_verify(rogue.node_id),
                                 protocol.encode(protocol.NodeVerify(honest.node_id)), timeout=5)
    reply = protocol.decode(msg.data, protocol.NodeVerifyReply)
    assert reply.node_id == rogue.node_id and reply.name == "rogue"  # about the asker, whatever it claims


async def test_4_chunks_from_a_node_that_speaks_first_are_never_shown(stack, double):
    """The rogue's chunks reach the stream before the assigned node produced any: the stream checks the
    assignment before showing the first token, refuses the impostor, and shows the honest text."""
    double.stall_after = 0  # the honest node's engine holds its first token until release()
    async with live_stream(stack, double, "job") as live:
        key, honest, rogue, reader, first, job_id = (live.key, live.honest, live.rogue, live.reader, live.events,
                                                     live.job_id)
        await stack.wait_job(key, job_id, statuses=("processing",))
        for seq in range(1, 4):
            chunk = protocol.TokenChunk(job_id, 1, seq, " INJECTED", node_id=rogue.node_id)
            await rogue.publish(subjects.node_job_tokens(rogue.node_id, job_id), protocol.encode(chunk))
        await settle(stack, rogue)
        double.release()
        events = first + [e async for e in reader.events()]
    text = "".join(t for _, t in tokens(events))
    assert "INJECTED" not in text and text == GENUINE_TEXT
    assert_genuine(stack, await stack.wait_job(key, job_id), honest.node_id)

