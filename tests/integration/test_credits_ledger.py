"""The credit ledger under concurrency, on real PostgreSQL: a property test over random jobs and outcomes.

Many jobs of one account near its limit are submitted at once through the real JobService (reservation in the
submit transaction), then ended concurrently through the real recorder, sweeper and cancel paths — completed,
engine errors, retries, a node dying mid-job (re-placement), a node lost after tokens, no capacity, timeouts,
cancels, racing outcomes and redelivered results — while ledger rollups run and a "replica restart" swaps every
in-memory object for new ones. Afterwards: the ledger sums to the balance, nothing stays reserved, every
reservation was closed exactly once, charges follow the price, operators got their share, and available
credits were never negative.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from control_plane.accounts.auth import Principal
from control_plane.accounts.service import create_account, create_key
from control_plane.credits import ledger, pricing, prices
from control_plane.credits.pricing import Price
from control_plane.errors import PaymentRequired
from control_plane.jobs.dispatcher import Dispatcher
from control_plane.jobs.recorder import OutcomeRecorder
from control_plane.jobs.schemas import JobCreate, MessageIn
from control_plane.jobs.service import JobService
from control_plane.jobs.sweeper import Sweeper
from control_plane.nodes.service import register_node
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database

OUTCOMES = ("completed", "engine_error", "retried_then_completed", "node_died_then_completed",
            "node_lost_after_tokens", "no_capacity", "timeout", "cancel_pending", "cancel_running", "racing",
            "redelivered")


@dataclass
class Replica:
    """The in-memory half of a control plane over one database pool: what a restart throws away."""

    db: Database
    service: JobService
    recorder: OutcomeRecorder
    sweeper: Sweeper

    @classmethod
    async def open(cls, url: str, settings: Settings) -> Replica:
        db = await Database.open(url, min_size=2, max_size=12)
        registry = NodeRegistry()
        dispatcher = Dispatcher(db, None, registry, settings)
        sweeper = Sweeper(db, registry, dispatcher, settings)
        return cls(db, JobService(db, registry, dispatcher, sweeper, settings),
                   OutcomeRecorder(db, None, registry, dispatcher, settings), sweeper)


job_specs = st.fixed_dictionaries({
    # (NUL cannot be stored in jsonb: the API's 500 on it is reported separately, not this test's subject.)
    "content": st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40),
    "max_tokens": st.integers(1, 400),
    "outcome": st.sampled_from(OUTCOMES),
    "prompt_tokens": st.integers(0, 80),
    # Sometimes more than the estimate allows: the charge must still stay within the reservation.
    "completion_tokens": st.integers(0, 450),
})

scenarios = st.fixed_dictionaries({
    "first": st.lists(job_specs, min_size=1, max_size=14),
    "second": st.lists(job_specs, max_size=8),
    "fill": st.floats(0.2, 1.3),
    "price_in": st.integers(0, 300_000),
    "price_out": st.integers(1, 400_000),
    "model_price": st.one_of(st.none(), st.tuples(st.integers(0, 300_000), st.integers(0, 400_000))),
    "share_bps": st.integers(0, 10_000),
})


def payload_of(spec: dict) -> dict:
    return {"messages": [{"role": "user", "content": spec["content"]}],
            "params": {"max_tokens": spec["max_tokens"], "temperature": 0.7, "top_p": 1.0}, "stream": False}


@pytest.fixture
async def pool(database_url):
    db = await Database.open(database_url, min_size=1, max_size=4)
    yield db
    await db.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(scenario=scenarios)
async def test_concurrent_jobs_near_the_limit_never_overspend_and_settle_exactly_once(database_url, pool, scenario):
    tag = secrets.token_hex(4)
    model = f"m{tag}:1b"
    cfg = Settings(database_url=database_url, warmup_s=1e9, default_price_input=scenario["price_in"],
                   default_price_output=scenario["price_out"], operator_share_bps=scenario["share_bps"],
                   max_attempts=3)
    price = Price(scenario["price_in"], scenario["price_out"])
    if scenario["model_price"] is not None:
        price = Price(*scenario["model_price"])
        await prices.set_price(pool, model, price)

    def worst_case(spec):
        return pricing.cost(pricing.estimate_prompt_tokens(payload_of(spec)), spec["max_tokens"], price)

    grant = int(sum(worst_case(s) for s in scenario["first"]) * scenario["fill"])
    account = await create_account(pool, f"acct-{tag}", credits=grant)
    operator = await create_account(pool, f"op-{tag}", credits=0)
    key = await create_key(pool, account["id"])
    principal = Principal(key_id=key.key_id, account_id=account["id"])
    seen_negative: list = []
    stop = asyncio.Event()

    async def watch():
        """Sample the account's credits and fold the ledger while everything runs."""
        while not stop.is_set():
            c = await ledger.account_credits(pool, account["id"])
            if c.available < 0 or c.reserved < 0:
                seen_negative.append(c)
            await ledger.roll_up(pool)
            await asyncio.sleep(0)

    async def submit(replica: Replica, spec: dict):
        body = JobCreate(model=model, messages=[MessageIn("user", spec["content"])], max_tokens=spec["max_tokens"])
        try:
            row = await replica.service.submit(principal, body)
        except PaymentRequired:
            return None
        node = await register_node(pool, f"n-{tag}", operator["id"])
        return row["id"], node.node_id, spec

    watcher = asyncio.create_task(watch())
    first = await Replica.open(database_url, cfg)
    second = None
    try:
        # Phase 1: every first-round job at once, nothing ending yet.
        accepted1 = await asyncio.gather(*(submit(first, s) for s in scenario["first"]))
        held1 = sum(worst_case(a[2]) for a in accepted1 if a)
        assert held1 <= grant
        for spec, got in zip(scenario["first"], accepted1):
            if got is None:  # refused only when it really did not fit next to everything accepted
                assert worst_case(spec) > grant - held1
        # A control plane restart: every in-memory object is replaced, the database carries on.
        await first.db.close()
        second = await Replica.open(database_url, cfg)
        # Phase 2: first-round jobs end by every path while second-round jobs are submitted.
        ended = [run_outcome(second, *a) for a in accepted1 if a]
        results = await asyncio.gather(*ended, *(submit(second, s) for s in scenario["second"]))
        accepted2 = [r for r in results[len(ended):] if r]
        await asyncio.gather(*(run_outcome(second, *a) for a in accepted2))
    finally:
        stop.set()
        await watcher
        if second is not None:
            await second.db.close()

    assert seen_negative == []
    accepted = [a for a in accepted1 if a] + accepted2
    await check_ledger(pool, account["id"], operator["id"], grant, accepted, price, scenario["share_bps"],
                       worst_case)


async def run_outcome(r: Replica, job_id: str, node_id: str, spec: dict) -> None:
    """End one job the way `spec["outcome"]` says, through the code paths that do it in production."""
    usage = protocol.Usage(spec["prompt_tokens"], spec["completion_tokens"])

    async def start(attempt: int) -> str:
        lease = secrets.token_hex(8)
        assert await r.db.execute("start_attempt", {"id": job_id, "attempt": attempt, "lease": lease,
                                                    "node_id": node_id}) == 1
        return lease

    def result(attempt: int, lease: str) -> protocol.JobResult:
        return protocol.JobResult(job_id=job_id, attempt=attempt, lease=lease, node_id=node_id, content="x",
                                  usage=usage)

    def failure(attempt: int, lease: str, error: str, retryable: bool) -> protocol.JobFailure:
        return protocol.JobFailure(job_id=job_id, attempt=attempt, lease=lease, node_id=node_id, error=error,
                                   message="test", usage=usage, retryable=retryable)

    owner = Principal(key_id="", account_id=(await r.db.fetchone("get_job_any", {"id": job_id}))["account_id"])
    outcome = spec["outcome"]
    if outcome == "completed":
        assert await r.recorder.record(result(1, await start(1))) is not None
    elif outcome == "redelivered":  # JetStream redelivers a result that was already recorded
        lease = await start(1)
        assert await r.recorder.record(result(1, lease)) is not None
        assert await r.recorder.record(result(1, lease)) is None
    elif outcome == "engine_error":
        await r.recorder.record(failure(1, await start(1), "engine_error", False))
    elif outcome == "retried_then_completed":
        await r.recorder.record(failure(1, await start(1), "engine_unavailable", True))
        await r.recorder.record(result(2, await start(2)))
    elif outcome == "node_died_then_completed":
        lease1 = await start(1)
        await r.sweeper.nodes_lost([node_id])  # re-placed: attempt 2, no settlement in between
        lease2 = await start(2)
        assert await r.recorder.record(result(1, lease1)) is None  # the dead node's late result is ignored
        assert await r.recorder.record(result(2, lease2)) is not None
    elif outcome == "node_lost_after_tokens":
        lease = await start(1)
        await r.db.execute("mark_first_token", {"id": job_id, "attempt": 1, "node_id": node_id, "lease": lease})
        await r.sweeper.nodes_lost([node_id])
    elif outcome == "no_capacity":
        await r.db.execute("fail_pending", {"id": job_id, "error": "no_capacity", "error_message": "test"})
    elif outcome == "timeout":
        await start(1)
        await r.db.execute("expire_processing", {"id": job_id, "attempt": 1})
    elif outcome == "cancel_pending":
        await r.service.cancel(owner, job_id)
    elif outcome == "cancel_running":
        lease = await start(1)
        await r.service.cancel(owner, job_id)
        assert await r.recorder.record(result(1, lease)) is None  # arrives after the cancel: kept, not charged
    elif outcome == "racing":  # a result, a lost node and a deadline all at once: one of them ends it
        lease = await start(1)
        await r.db.execute("mark_first_token", {"id": job_id, "attempt": 1, "node_id": node_id, "lease": lease})
        await asyncio.gather(r.recorder.record(result(1, lease)), r.sweeper.nodes_lost([node_id]),
                             r.db.execute("expire_processing", {"id": job_id, "attempt": 1}))
    row = await r.db.fetchone("get_job_any", {"id": job_id})
    assert row["status"] in ("completed", "failed", "cancelled"), (outcome, row["status"])


async def check_ledger(db: Database, account_id: str, operator_id: str, grant: int, accepted: list, price: Price,
                       share_bps: int, worst_case) -> None:
    entries = await db.fetchall("list_credit_transactions", {
        "account_id": account_id, "limit": 100_000, "before": None, "kinds": None, "job_id": None,
        "since": None, "until": None})
    c = await ledger.account_credits(db, account_id)
    assert sum(e["amount"] for e in entries) == c.balance
    assert sum(e["held"] for e in entries) == c.reserved == 0
    by_job: dict[str, list[dict]] = {}
    for e in entries:
        if e["job_id"]:
            by_job.setdefault(e["job_id"], []).append(e)
    assert set(by_job) == {a[0] for a in accepted}  # refused submissions left nothing behind
    jobs = await db.fetchall("list_jobs", {"account_id": account_id, "status": None, "since": None, "limit": 10_000})
    assert {j["id"] for j in jobs} == set(by_job)
    expected_payout = total_charged = 0
    for job in jobs:
        kinds = sorted(e["kind"] for e in by_job[job["id"]])
        spec = next(a[2] for a in accepted if a[0] == job["id"])
        reserve = next(e for e in by_job[job["id"]] if e["kind"] == "reserve")
        assert reserve["held"] == worst_case(spec)  # SQL and Python agree on the worst case
        assert sum(e["held"] for e in by_job[job["id"]]) == 0  # released exactly once, in full
        if job["status"] == "completed":
            assert kinds == ["charge", "release", "reserve"]
            charged = pricing.charge(reserve["held"], job["prompt_tokens"], job["completion_tokens"], price)
            expected_payout += pricing.payout(charged, share_bps)
        else:
            assert kinds == ["refund", "reserve"]
            charged = 0
        assert job["credits_charged"] == charged
        total_charged += charged
    assert c.balance == grant - total_charged >= 0
    payouts = await db.fetchall("list_credit_transactions", {
        "account_id": operator_id, "limit": 100_000, "before": None, "kinds": ["payout"], "job_id": None,
        "since": None, "until": None})
    assert sum(p["amount"] for p in payouts) == expected_payout
    assert len(payouts) == sum(1 for j in jobs if j["status"] == "completed")
    # The rollups agree with a plain sum of the ledger.
    await ledger.roll_up(db)
    assert (await ledger.account_credits(db, account_id)).balance == c.balance


async def test_the_ledger_is_append_only(pool):
    account = await create_account(pool, "append-only", credits=5)
    for statement in ("UPDATE credit_ledger SET amount = amount + 1", "DELETE FROM credit_ledger"):
        with pytest.raises(Exception, match="append-only"):
            await _raw(pool, statement)
    assert (await ledger.account_credits(pool, account["id"])).balance == 5


async def _raw(db: Database, sql: str) -> None:
    async with db._conn() as conn:  # a statement the application never runs: only to prove it is refused
        await conn.execute(sql)
