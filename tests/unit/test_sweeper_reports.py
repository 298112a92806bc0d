"""The sweeper's check of nodes' `running` reports: an attempt its node stopped listing is lost, unless the
node stored its outcome and that outcome only waits to be recorded (the results consumer was re-electing)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from control_plane.jobs.dispatcher import Dispatcher
from control_plane.jobs.sweeper import Sweeper
from control_plane.nodes.reports import RunningReports
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from protocol import Advertisement, ModelInfo

NODE = "node_a"
ASSIGNED = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Jobs:
    """One processing job row, honouring the named queries the report check runs."""

    def __init__(self) -> None:
        self.row = {"id": "job_1", "attempt": 1, "lease": "l1", "node_id": NODE, "first_token_at": None,
                    "assigned_at": ASSIGNED, "status": "processing"}
        self.requeued = 0

    async def fetchall(self, name: str, params: dict) -> list[dict]:
        assert name == "unconfirmed_processing"
        return [dict(self.row)] if self.row["status"] == "processing" else []

    async def fetchone(self, name: str, params: dict) -> dict | None:
        assert name == "requeue_attempt"
        self.requeued += 1
        self.row["status"] = "pending"
        return {"id": "job_1", "model": "m", "attempt": 1, "pinned_node_id": None, "kind": "chat",
                "request": {"messages": []}, "deadline": 1e12}


def check(stored: bool) -> tuple[Jobs, list[tuple]]:
    async def go() -> tuple[Jobs, list[tuple]]:
        db, asked = Jobs(), []

        async def outcome_waiting(node_id: str, job_id: str, attempt: int, lease: str | None) -> bool:
            asked.append((node_id, job_id, attempt, lease))
            return stored
        settings = Settings(replica_id="r1", max_attempts=3)
        registry = NodeRegistry(now=lambda: 0.0)
        dispatcher = Dispatcher(db, None, registry, settings)  # type: ignore[arg-type]
        sweeper = Sweeper(db, registry, dispatcher, settings, outcome_waiting=outcome_waiting)  # type: ignore[arg-type]
        sweeper.reports = RunningReports()
        for seconds in (1, 2, 3):  # three reports after the assignment, none listing the job
            sweeper.reports.record(NODE, ASSIGNED + timedelta(seconds=seconds), (), 1.0)
            await sweeper._check_reports()
        return db, asked
    return asyncio.run(go())


def test_an_attempt_its_node_stopped_listing_is_re_placed() -> None:
    db, asked = check(stored=False)
    assert asked and asked[0] == (NODE, "job_1", 1, "l1")
    assert db.requeued == 1 and db.row["status"] == "pending"


def test_an_attempt_whose_outcome_is_stored_but_not_yet_recorded_is_left_to_the_recorder() -> None:
    db, asked = check(stored=True)
    assert asked  # the check did find it missing
    assert db.requeued == 0 and db.row["status"] == "processing"


def lose_on(known: str | None) -> Jobs:
    """One report check of a processing attempt on NODE, with `known`: None (NODE never seen here), "offline"
    (advertised once, silent since) or "online" (advertising, but not listing jobs)."""
    async def go() -> Jobs:
        db = Jobs()
        clock = [0.0]
        settings = Settings(replica_id="r1", max_attempts=3)
        registry = NodeRegistry(now=lambda: clock[0])
        if known is not None:
            registry.observe(Advertisement(node_id=NODE, agent_version="0", engine="ollama", state="online",
                                           slots=1, active_jobs=1, interval_s=1.0, boot_id="b",
                                           models=(ModelInfo("m", loaded=True),)))
            clock[0] = 60.0 if known == "offline" else 0.5
        dispatcher = Dispatcher(db, None, registry, settings)  # type: ignore[arg-type]
        sweeper = Sweeper(db, registry, dispatcher, settings)  # type: ignore[arg-type]
        sweeper.reports = RunningReports()  # no report from NODE at all
        await sweeper._check_reports()
        return db
    return asyncio.run(go())


def test_an_attempt_on_a_node_offline_or_unknown_here_is_re_placed() -> None:
    """A replica that died while handing a job to a node that died too can leave the attempt committed after
    the node's loss was handled: nothing else would ever re-place it."""
    for known in (None, "offline"):
        db = lose_on(known)
        assert db.requeued == 1 and db.row["status"] == "pending", known


def test_an_attempt_on_an_online_node_that_sends_no_reports_is_left_alone() -> None:
    db = lose_on("online")
    assert db.requeued == 0 and db.row["status"] == "processing"
