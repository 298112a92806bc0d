"""Answers a waiting request from its job's result message, before the recorder has written the row.

The result is durable once the node's JetStream publish is acknowledged, and the recorder writes it (and
settles the credits, exactly once, in PostgreSQL) behind the answer. So a non-streamed request need not wait
for that write: it may answer from the message when the message is provably the job's: the attempt this
replica placed and its node accepted, with the lease only that node was given. Anything else (a failure, an
attempt this replica did not place, a typed job that must be validated first, a reservation this request did
not make) waits for the row as before.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import protocol
from control_plane.credits import pricing
from control_plane.jobs.dispatcher import Placement
from control_plane.jobs.recorder import result_payload


#: What `early` answers while the result is provably the job's except that the node's reply to the offer is
#: still on its way (the result overtook it): ask again once the placement is decided, rather than wait for the row.
UNDECIDED: dict[str, Any] = {}


def awaiting_reply(placed: Placement | None, outcome: protocol.JobOutcome) -> bool:
    """The outcome is a result of the attempt this replica offered, whose node has not been heard to accept yet."""
    return (placed is not None and not placed.accepted and isinstance(outcome, protocol.JobResult)
            and (outcome.attempt, outcome.lease, outcome.node_id) == (placed.attempt, placed.lease, placed.node_id))


def final_row(row: dict[str, Any], placed: Placement | None, outcome: protocol.JobOutcome) -> dict[str, Any] | None:
    """The completed row `outcome` implies for the job submitted as `row`, or None to wait for the real one.

    `row` is what submission returned (its reservation terms included); the charge is computed exactly as the
    settlement trigger will compute it (pricing.charge, tested against infernet_settle_job)."""
    if not isinstance(outcome, protocol.JobResult) or placed is None or not placed.accepted:
        return None
    if (outcome.job_id, outcome.attempt, outcome.lease, outcome.node_id) != (
            row["id"], placed.attempt, placed.lease, placed.node_id):
        return None
    if placed.model != row["model"] or "response_schema" in (row.get("request") or {}) or row.get("amount") is None:
        return None
    prompt, completion = outcome.usage.prompt_tokens, outcome.usage.completion_tokens
    if not _within_bounds(row.get("request") or {}, outcome, prompt, completion):
        return None  # the recorder may cut this usage to its bounds (infernet_check_usage): wait for the row
    charged = pricing.charge(int(row["amount"]), prompt, completion,
                             pricing.Price(int(row["price_input"]), int(row["price_output"])))
    return row | {
        "status": "completed", "result": result_payload(outcome), "prompt_tokens": prompt,
        "completion_tokens": completion, "credits_charged": charged, "node_id": outcome.node_id,
        "attempt": outcome.attempt, "completed_at": datetime.now(timezone.utc), "error": None,
        "error_message": None,
    }


def _within_bounds(request: dict[str, Any], outcome: protocol.JobResult, prompt: int, completion: int) -> bool:
    """The claimed usage is certainly under the bounds the recorder's trigger enforces (migration 0080,
    infernet_usage_bounds), so the row will keep it and the charge computed here is the one settled.

    Computed from lower bounds of those caps: the stored request's JSON text holds at least every message's
    UTF-8 bytes; the completion cap is at least min(max_tokens, the content's UTF-8 bytes + 1)."""
    messages = request.get("messages") or ()
    prompt_floor = sum(len(str(m.get("content") or "").encode()) for m in messages) + 64 + 8 * len(messages)
    max_tokens = (request.get("params") or {}).get("max_tokens")
    limit = int(max_tokens) if isinstance(max_tokens, (int, float)) and not isinstance(max_tokens, bool) else 512
    completion_floor = min(limit, len(outcome.content.encode()) + 1)
    return 0 <= prompt <= prompt_floor and 0 <= completion <= completion_floor
