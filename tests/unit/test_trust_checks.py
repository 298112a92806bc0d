"""A check or probe is a job like any other on the bus: its assignment has the shape of a user job's."""

from __future__ import annotations

import msgspec

from control_plane.jobs.dispatcher import QueuedJob
from control_plane.trust.verify import comparable, deterministic

USER_REQUEST = {
    "messages": [{"role": "user", "content": "Hello there"}],
    "params": {"max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": 7},
    "stream": True, "webhook_url": "https://example.com/hook",
}


def assignment(request: dict, job_id: str) -> dict:
    row = {"id": job_id, "model": "m", "kind": "chat", "request": request, "deadline": 1e9}
    wire = msgspec.to_builtins(QueuedJob.from_row(row, attempt=1).assignment("lease"))
    return {k: v for k, v in wire.items() if k not in ("job_id", "lease")}


def test_a_check_assignment_equals_the_user_jobs_but_for_its_id_and_lease():
    check = {k: v for k, v in USER_REQUEST.items() if k != "webhook_url"}
    check["trust"] = {"check_of": "job_a", "suspect": "node_x", "round": 1, "first_check": None, "replay": None}
    probe = dict(check, trust={"probe_of": "job_r", "target": "node_x", "probe": True})
    user = assignment(USER_REQUEST, "job_a")
    assert assignment(check, "job_b") == user == assignment(probe, "job_c")
    assert "trust" not in msgspec.json.encode(QueuedJob.from_row(
        {"id": "job_b", "model": "m", "kind": "chat", "request": check, "deadline": 1e9}, attempt=1
    ).assignment("lease")).decode()


def test_which_jobs_can_be_checked():
    assert deterministic(USER_REQUEST) and comparable(USER_REQUEST)
    sampled = dict(USER_REQUEST, params={"temperature": 0.7})
    assert comparable(sampled) and not deterministic(sampled)
    assert not comparable(dict(USER_REQUEST, params={"temperature": 0, "tools": [{"type": "function"}]}))
    assert not comparable(dict(USER_REQUEST, messages=[{"role": "user", "content": "x", "images": ["b64"]}]))
