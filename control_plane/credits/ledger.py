"""The credit ledger: balances, reservations at submit, deposits, the transaction list, and rollups.

Settlement (charge, release, refund, payout) happens in PostgreSQL itself: the `jobs_settle_credits` trigger
of migration 0002 runs in the same statement that moves a job to completed, failed or cancelled, so no code
path can end a job without settling it, and none can settle it twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from control_plane.credits import pricing
from control_plane.errors import PaymentRequired
from control_plane.settings import Settings
from control_plane.store import Database, StoreError

log = structlog.get_logger("control_plane.credits")

KINDS = ("deposit", "reserve", "charge", "release", "refund", "payout")


@dataclass(frozen=True, slots=True)
class Credits:
    """An account's position: balance (sum of the ledger), reserved (held by running jobs), available."""

    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


async def account_credits(db: Database, account_id: str) -> Credits:
    row = await db.fetchone("account_credits", {"account_id": account_id})
    return Credits(balance=int(row["balance"]), reserved=int(row["reserved"]))


async def reserve(runner, settings: Settings, *, account_id: str, api_key_id: str | None, job_id: str,
                  model: str, payload: Mapping[str, Any], kind: str = "chat") -> int:
    """Hold a job's worst-case cost inside the caller's transaction; PaymentRequired (402) when it cannot.

    `runner` is the transaction that also inserts the job, so a refused job leaves nothing behind. The
    per-account advisory lock makes check-and-hold race-free; it is held only until that transaction commits
    and never blocks another account.
    """
    prompt = pricing.estimate_prompt_tokens(payload)
    completion = pricing.max_completion_tokens(payload, kind)
    await runner.execute("lock_account_credits", {"account_id": account_id})
    row = await runner.fetchone("reserve_credits", {
        "account_id": account_id, "api_key_id": api_key_id, "job_id": job_id, "model": model,
        "prompt_tokens": prompt, "max_tokens": completion,
        "default_input": settings.default_price_input, "default_output": settings.default_price_output,
        "operator_share_bps": settings.operator_share_bps,
    })
    if not row["held"]:
        raise insufficient(row, model=model, prompt=prompt, completion=completion)
    return int(row["amount"])


def insufficient(row: Mapping[str, Any], *, model: str, prompt: int, completion: int) -> PaymentRequired:
    """The 402 for a reservation that did not fit (`row`: amount, prices, balance and reserved it was tried at)."""
    available = int(row["balance"]) - int(row["reserved"])
    return PaymentRequired(
        f"insufficient credits: this job may cost up to {row['amount']} credits (prompt of at most "
        f"{prompt} tokens + max_tokens {completion} at {model}'s price of {row['price_input']}/"
        f"{row['price_output']} credits per 1M input/output tokens) but the account has {max(available, 0)} "
        f"available; top up the account or lower max_tokens")


async def deposit(db: Database, account_id: str, amount: int, note: str | None = None) -> dict:
    """Add credits to an account (a top-up); returns the ledger entry."""
    return await db.fetchone("deposit_credits", {"account_id": account_id, "amount": amount, "note": note})


async def transactions(db: Database, account_id: str, *, limit: int, before: int | None = None,
                       kinds: Sequence[str] | None = None, job_id: str | None = None,
                       since: datetime | None = None, until: datetime | None = None) -> list[dict]:
    """An account's ledger entries, newest first."""
    return await db.fetchall("list_credit_transactions", {
        "account_id": account_id, "limit": limit, "before": before, "kinds": list(kinds) if kinds else None,
        "job_id": job_id, "since": since, "until": until,
    })


async def roll_up(db: Database) -> int | None:
    """Fold finished transactions' entries into per-account rollups; None when another replica is at it."""
    async with db.transaction() as tx:
        if not (await tx.fetchone("try_lock_rollup"))["locked"]:
            return None
        return int((await tx.fetchone("roll_up_credits"))["accounts"])


class LedgerRollup:
    """Background task: advance the rollup horizon every few seconds so balance reads stay short."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._interval = settings.credits_rollup_s

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await roll_up(self._db)
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.warning("credits_rollup_failed", error=str(exc), action="retrying next interval")
            except Exception:
                log.exception("credits_rollup_error")


def credits_used_header(row: Mapping[str, Any] | None) -> dict[str, str]:
    """`x-credits-used` for a response about a job, once its cost is known (the job ended)."""
    charged = row.get("credits_charged") if row else None
    return {} if charged is None else {"x-credits-used": str(charged)}
