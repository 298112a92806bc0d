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
    charged = pricing.charge(int(row["amount"]), prompt, completion,
                             pricing.Price(int(row["price_input"]), int(row["price_output"])))
    return row | {
        "status": "completed", "result": result_payload(outcome), "prompt_tokens": prompt,
        "completion_tokens": completion, "credits_charged": charged, "node_id": outcome.node_id,
        "attempt": outcome.attempt, "completed_at": datetime.now(timezone.utc), "error": None,
        "error_message": None,
    }
