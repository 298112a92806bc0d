"""Retention on real PostgreSQL: old jobs lose their content (not their usage or cost), old ledger entries fold into
per-account totals with every balance unchanged to the credit, ended webhook deliveries go, running jobs are kept."""

from __future__ import annotations

import secrets

import pytest

import protocol
from control_plane.accounts.auth import Principal
from control_plane.accounts.service import create_account, create_key
from control_plane.credits import ledger
from control_plane.credits.usage import operator_node_stats
from control_plane.jobs.dispatcher import Dispatcher
from control_plane.jobs.recorder import OutcomeRecorder
from control_plane.jobs.schemas import JobCreate, MessageIn
from control_plane.jobs.service import JobService
from control_plane.jobs.sweeper import Sweeper
from control_plane.nodes.service import register_node
from control_plane.retention.service import Retention
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database


@pytest.fixture
async def db(database_url):
    db = await Database.open(database_url, min_size=1, max_size=4)
    yield db
    await db.close()


async def raw(db: Database, sql: str, params=None) -> list:
    async with db._conn() as conn:  # test set-up the application never does (moving rows back in time)
        cur = await conn.execute(sql, params)
        return await cur.fetchall() if cur.description else []


async def age(db: Database, job_ids: list[str], days: int = 40) -> None:
    """Pretend these jobs (and their ledger entries) ended `days` ago: the clock cannot be waited on for a month."""
    async with db._conn() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # the ledger's append-only trigger
        await conn.execute("UPDATE jobs SET created_at = created_at - make_interval(days => %s),"
                           " completed_at = completed_at - make_interval(days => %s) WHERE id = ANY(%s)",
                           (days, days, job_ids))
        await conn.execute("UPDATE credit_ledger SET created_at = created_at - make_interval(days => %s)"
                           " WHERE job_id = ANY(%s) OR (job_id IS NULL AND kind = 'deposit')", (days, job_ids))


async def test_old_jobs_are_pruned_and_balances_stay_exact(database_url, db):
    settings = Settings(database_url=database_url, warmup_s=1e9, job_content_retention_days=30, retention_batch=3,
                        retention_max_batches=100)
    registry = NodeRegistry()
    dispatcher = Dispatcher(db, None, registry, settings)
    service = JobService(db, registry, dispatcher, Sweeper(db, registry, dispatcher, settings), settings)
    recorder = OutcomeRecorder(db, None, registry, dispatcher, settings)
    account = await create_account(db, "retained", credits=5_000_000)
    operator = await create_account(db, "operator", credits=0)
    principal = Principal(key_id=(await create_key(db, account["id"])).key_id, account_id=account["id"])
    node = (await register_node(db, "gpu", operator["id"])).node_id

    async def job(outcome: str, tokens: int) -> str:
        row = await service.submit(principal, JobCreate(model="m:1b", max_tokens=64,
                                                        messages=[MessageIn("user", f"secret prompt {tokens}")]))
        if outcome == "pending":
            return row["id"]
        lease = secrets.token_hex(8)
        await db.execute("start_attempt", {"id": row["id"], "attempt": 1, "lease": lease, "node_id": node})
        usage = protocol.Usage(7, tokens)
        if outcome == "completed":
            await recorder.record(protocol.JobResult(job_id=row["id"], attempt=1, lease=lease, node_id=node,
                                                     content=f"secret answer {tokens}", usage=usage))
        elif outcome == "failed":
            await recorder.record(protocol.JobFailure(job_id=row["id"], attempt=1, lease=lease, node_id=node,
                                                      error="engine_error", message="boom", usage=usage,
                                                      partial_content="secret partial"))
        return row["id"]

    old = [await job("completed", t) for t in (3, 11, 17, 29, 31, 40, 41)] + [await job("failed", 5) for _ in range(2)]
    old_running = await job("processing", 0)
    new = [await job("completed", t) for t in (13, 19)]
    await raw(db, "INSERT INTO webhook_deliveries (job_id, id, account_id, url, event, status, completed_at) VALUES"
                  " (%s, 'whd_old', %s, 'https://x.example/h', 'job.completed', 'delivered', now() - interval '40 days'),"
                  " (%s, 'whd_new', %s, 'https://x.example/h', 'job.completed', 'delivered', now())",
              (old[0], account["id"], new[0], account["id"]))
    await age(db, old + [old_running])
    await ledger.roll_up(db)

    accounts = (account["id"], operator["id"])
    before = {a: await ledger.account_credits(db, a) for a in accounts}
    earnings = await operator_node_stats(db, operator["id"])
    usage = await raw(db, "SELECT id, status, model, prompt_tokens, completion_tokens, credits_charged, node_id"
                          " FROM jobs ORDER BY id")
    entries_before = (await raw(db, "SELECT count(*) FROM credit_ledger"))[0][0]

    report = await Retention(db, settings).tick(pause_s=0)

    assert report.jobs_pruned == len(old) and report.deliveries_dropped == 1
    for job_id in old:
        row = await db.fetchone("get_job_any", {"id": job_id})
        assert row["content_pruned_at"] is not None
        assert "messages" not in row["request"] and "content" not in row["result"]
        assert "secret" not in str(row["request"]) + str(row["result"])
        assert row["result"]["usage"]["completion_tokens"] == row["completion_tokens"]
    for job_id in new + [old_running]:
        row = await db.fetchone("get_job_any", {"id": job_id})
        assert row["content_pruned_at"] is None and "secret" in str(row["request"])
    # Metadata, usage and cost of every job are as they were.
    assert await raw(db, "SELECT id, status, model, prompt_tokens, completion_tokens, credits_charged, node_id"
                         " FROM jobs ORDER BY id") == usage
    assert [r[0] for r in await raw(db, "SELECT id FROM webhook_deliveries")] == ["whd_new"]

    # Old entries of ended jobs (and the old grants) are folded; nothing of new or still running jobs is.
    folded = entries_before - (await raw(db, "SELECT count(*) FROM credit_ledger"))[0][0]
    assert folded == report.ledger_folded > 0
    assert await raw(db, "SELECT count(*) FROM credit_ledger WHERE job_id = ANY(%s)", (old,)) == [(0,)]
    assert await raw(db, "SELECT kind FROM credit_ledger WHERE job_id = %s", (old_running,)) == [("reserve",)]
    assert (await raw(db, "SELECT count(*) FROM credit_ledger WHERE job_id = ANY(%s)", (new,)))[0][0] > 0

    # Every balance is unchanged to the credit; so are the operator's earnings per node.
    assert {a: await ledger.account_credits(db, a) for a in accounts} == before
    assert await operator_node_stats(db, operator["id"]) == earnings
    await assert_folds_exact(db)

    # The job still running when its old entries were folded settles normally afterwards.
    await recorder.record(protocol.JobResult(job_id=old_running, attempt=1, lease=(await db.fetchone(
        "get_job_any", {"id": old_running}))["lease"], node_id=node, content="late", usage=protocol.Usage(7, 9)))
    charged = (await db.fetchone("get_job_any", {"id": old_running}))["credits_charged"]
    assert charged > 0
    await ledger.roll_up(db)
    after = await ledger.account_credits(db, account["id"])
    assert (after.balance, after.reserved) == (before[account["id"]].balance - charged, 0)
    await assert_folds_exact(db)


async def assert_folds_exact(db: Database) -> None:
    """Per account: rollup == folded totals + ledger entries below the rollup horizon (balance and held)."""
    for row in await db.fetchall("ledger_fold_check"):
        assert row["rollup_balance"] == row["folded_plus_entries_balance"], row
        assert row["rollup_held"] == row["folded_plus_entries_held"], row


async def test_only_the_folding_transaction_may_delete_and_never_an_unrolled_entry(db):
    account = await create_account(db, "guarded", credits=5)
    with pytest.raises(Exception, match="append-only"):
        await raw(db, "DELETE FROM credit_ledger")
    with pytest.raises(Exception, match="not inside the rollups"):  # the grant is newer than the rollup horizon
        async with db.transaction() as tx:
            await tx.fetchone("allow_ledger_fold")
            await raw_in(tx, "DELETE FROM credit_ledger")
    assert (await ledger.account_credits(db, account["id"])).balance == 5


async def raw_in(tx, sql: str) -> None:
    async with tx._conn.cursor() as cur:
        await cur.execute(sql)
