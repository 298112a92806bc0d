"""The /v1 answer from a result message: only for the attempt this replica placed, with usage the recorder keeps."""

from __future__ import annotations

import protocol
from control_plane.credits import pricing
from control_plane.jobs.dispatcher import Placement
from control_plane.jobs.early import awaiting_reply, final_row

ROW = {"id": "job_1", "model": "m", "amount": 1000, "price_input": 100_000, "price_output": 200_000,
       "status": "pending", "request": {"messages": [{"role": "user", "content": "Say hello"}],
                                        "params": {"max_tokens": 16}}}
PLACED = Placement("node_a", "lease1", 1, "m", accepted=True)


def result(**changes) -> protocol.JobResult:
    fields = dict(job_id="job_1", attempt=1, lease="lease1", node_id="node_a", content="hello there friend",
                  usage=protocol.Usage(3, 3, 6))
    fields.update(changes)
    return protocol.JobResult(**fields)


def test_the_placed_attempts_result_answers_with_the_charge_settlement_makes():
    final = final_row(ROW, PLACED, result())
    assert final["status"] == "completed" and final["result"]["content"] == "hello there friend"
    assert final["credits_charged"] == pricing.charge(1000, 3, 3, pricing.Price(100_000, 200_000))
    assert final["prompt_tokens"] == 3 and final["completion_tokens"] == 3


def test_anything_not_provably_the_placed_attempts_result_waits_for_the_row():
    assert final_row(ROW, None, result()) is None  # placed by another replica
    assert final_row(ROW, Placement("node_a", "lease1", 1, "m"), result()) is None  # offer not yet accepted
    assert final_row(ROW, PLACED, result(lease="other")) is None
    assert final_row(ROW, PLACED, result(node_id="node_b")) is None
    assert final_row(ROW, PLACED, result(attempt=2)) is None
    failure = protocol.JobFailure(job_id="job_1", attempt=1, lease="lease1", node_id="node_a", error="engine_error",
                                  message="x")
    assert final_row(ROW, PLACED, failure) is None
    typed = ROW | {"request": ROW["request"] | {"response_schema": {"type": "object"}}}
    assert final_row(typed, PLACED, result()) is None
    assert final_row(ROW | {"amount": None}, PLACED, result()) is None  # no reservation terms (a replay)


def test_usage_the_recorder_would_cut_to_its_bounds_waits_for_the_row():
    # completion: at most max_tokens and the content's bytes + 1; prompt: at most the request's bytes + template.
    assert final_row(ROW, PLACED, result(usage=protocol.Usage(3, 17, 20))) is None
    assert final_row(ROW, PLACED, result(content="hi", usage=protocol.Usage(3, 4, 7))) is None
    assert final_row(ROW, PLACED, result(usage=protocol.Usage(10_000, 3, 10_003))) is None
    assert final_row(ROW, PLACED, result(content="hi", usage=protocol.Usage(3, 3, 6))) is not None


def test_a_result_that_overtook_the_nodes_accept_waits_for_the_reply_not_the_row():
    offered = Placement("node_a", "lease1", 1, "m")  # offered, the node's reply not processed yet
    assert final_row(ROW, offered, result()) is None
    assert awaiting_reply(offered, result())
    woken = []
    offered.on_decided = lambda: woken.append(True)
    offered.accepted = True
    offered.decided()
    offered.decided()  # called once however often the dispatcher says so
    assert woken == [True] and final_row(ROW, offered, result()) is not None


def test_only_the_offered_attempts_result_waits_for_the_reply():
    offered = Placement("node_a", "lease1", 1, "m")
    assert not awaiting_reply(None, result())  # placed by another replica
    assert not awaiting_reply(PLACED, result())  # accepted already: answered or refused by final_row itself
    assert not awaiting_reply(offered, result(lease="other"))
    assert not awaiting_reply(offered, result(node_id="node_b"))
    assert not awaiting_reply(offered, result(attempt=2))
    failure = protocol.JobFailure(job_id="job_1", attempt=1, lease="lease1", node_id="node_a", error="engine_error",
                                  message="boom")
    assert not awaiting_reply(offered, failure)
