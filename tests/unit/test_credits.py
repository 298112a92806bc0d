"""Credits read-backs and auth caching without a database: usage totals, views, and cache invalidation."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from control_plane.accounts.auth import Authenticator
from control_plane.credits.ledger import Credits, credits_used_header
from control_plane.credits.schemas import usage_record
from control_plane.credits.usage import totals
from control_plane.errors import BadRequest, Forbidden, Unauthorized
from control_plane.lib.ids import secret_hash
from control_plane.lib.timestamps import PATTERN, parse_timestamp


def test_totals_fold_groups_per_model_and_per_day():
    groups = [
        {"model": "a", "day": date(2026, 1, 1), "jobs": 2, "prompt_tokens": 10, "completion_tokens": 20, "credits": 5},
        {"model": "b", "day": date(2026, 1, 1), "jobs": 1, "prompt_tokens": 1, "completion_tokens": 2, "credits": 1},
        {"model": "a", "day": date(2026, 1, 2), "jobs": 3, "prompt_tokens": 3, "completion_tokens": 4, "credits": 2},
    ]
    t = totals(groups)
    assert t["overall"] == {"jobs": 6, "prompt_tokens": 14, "completion_tokens": 26, "credits": 8}
    assert t["by_model"] == [
        {"model": "a", "jobs": 5, "prompt_tokens": 13, "completion_tokens": 24, "credits": 7},
        {"model": "b", "jobs": 1, "prompt_tokens": 1, "completion_tokens": 2, "credits": 1},
    ]
    assert [d["day"] for d in t["by_day"]] == ["2026-01-02", "2026-01-01"]  # newest first
    assert totals([])["overall"] == {"jobs": 0, "prompt_tokens": 0, "completion_tokens": 0, "credits": 0}


def test_available_is_balance_minus_reserved():
    assert Credits(balance=100, reserved=30).available == 70


def test_credits_header_only_once_the_cost_is_known():
    assert credits_used_header({"credits_charged": None}) == {}
    assert credits_used_header(None) == {}
    assert credits_used_header({"credits_charged": 0}) == {"x-credits-used": "0"}
    assert credits_used_header({"credits_charged": 42}) == {"x-credits-used": "42"}


def test_usage_record_from_a_row():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rec = usage_record({"id": "job_1", "model": "m", "node_id": "node_1", "api_key_id": "key_1",
                        "status": "completed", "error": None, "prompt_tokens": 3, "completion_tokens": 4,
                        "credits_charged": 9, "created_at": t0, "completed_at": t0 + timedelta(milliseconds=1500),
                        "ttft_ms": 12.5})
    assert (rec.total_tokens, rec.credits, rec.latency_ms, rec.ttft_ms) == (7, 9, 1500, 12.5)
    assert rec.created_at == "2026-01-01T00:00:00Z"


def test_timestamps_are_exactly_rfc_3339_date_times():
    assert parse_timestamp(None, "since") is None
    assert parse_timestamp("2026-01-01T00:00:00Z", "since") == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_timestamp("2026-01-01t01:30:00.1234567+01:30", "since") == \
        datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)
    assert parse_timestamp("2026-01-01T00:00:00-00:00", "since") == datetime(2026, 1, 1, tzinfo=timezone.utc)
    # Not RFC 3339 (Python's fromisoformat takes several of these), or not a calendar instant.
    for bad in ("yesterday", "", "2026-01-01T00:00:00", "2026-01-01 00:00:00Z", "2026-01-01", "20260101T000000Z",
                "2026-01-01T00:00Z", "2026-01-01T00:00:00+0100", "2026-01-01T23:59:60Z", "2026-02-30T00:00:00Z",
                "0000-01-01T00:00:00Z", "2026-01-01T00:00:00+24:00", "2026-01-01T00:00:00Z\n", "null"):
        with pytest.raises(BadRequest) as refused:
            parse_timestamp(bad, "since")
        assert refused.value.param == "since"


def test_the_documented_timestamp_pattern_is_what_the_parser_reads():
    import re

    for good in ("2026-01-01T00:00:00Z", "1999-12-31t23:59:59.5z", "0001-01-01T00:00:00+23:59"):
        assert re.fullmatch(PATTERN, good) and parse_timestamp(good, "t") is not None
    for bad in ("2026-01-01 00:00:00Z", "2026-13-01T00:00:00Z", "2026-01-01T24:00:00Z", "0000-01-01T00:00:00Z"):
        assert not re.fullmatch(PATTERN, bad)


class FakeKeys:
    """The named-query interface the Authenticator uses, over an in-memory key table."""

    def __init__(self) -> None:
        self.rows: dict[bytes, dict] = {}
        self.reads = 0

    def add(self, raw: str, **fields) -> dict:
        row = {"key_id": f"key_{len(self.rows)}", "account_id": "acct_1", "key_hash": secret_hash(raw),
               "prefix": raw[:12], "is_admin": False, "revoked_at": None, "expires_at": None, "model_pool": None,
               "optimize_mode": "balanced", "rate_limit_rpm": None, "rate_limit_tpm": None,
               "account_active": True, "account_name": "acme"} | fields
        self.rows[row["key_hash"]] = row
        return row

    async def fetchone(self, name: str, params: dict) -> dict | None:
        assert name == "get_principal_by_key_hash"
        self.reads += 1
        row = self.rows.get(params["key_hash"])
        return dict(row) if row else None


async def test_authenticator_codes_messages_and_cache():
    db = FakeKeys()
    now = [0.0]
    auth = Authenticator(db, cache_secs=2.0, clock=lambda: now[0])
    raw = "inf_" + "a" * 40
    row = db.add(raw, model_pool=["m1", "m2"], rate_limit_rpm=60)
    principal = await auth.authenticate(f"Bearer {raw}")
    assert principal.key_id == row["key_id"] and principal.model_pool == ("m1", "m2")
    assert principal.rate_limit_rpm == 60 and not principal.is_admin

    for header in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(Unauthorized):
            await auth.authenticate(header)
    with pytest.raises(Unauthorized) as unknown:
        await auth.authenticate("Bearer inf_" + "b" * 40)
    assert "b" * 40 not in str(unknown.value)  # a raw key never appears in an error

    # Revoked in the database: the cache still answers until invalidated (or its TTL passes) ...
    db.rows[row["key_hash"]]["revoked_at"] = datetime.now(timezone.utc)
    reads = db.reads
    await auth.authenticate(f"Bearer {raw}")
    assert db.reads == reads
    auth.invalidate(row["key_id"])
    with pytest.raises(Forbidden, match="revoked"):
        await auth.authenticate(f"Bearer {raw}")

    expired = "inf_" + "c" * 40
    db.add(expired, expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    with pytest.raises(Forbidden, match="expired"):
        await auth.authenticate(f"Bearer {expired}")

    other = "inf_" + "d" * 40
    db.add(other, account_id="acct_2")
    await auth.authenticate(f"Bearer {other}")
    db.rows[secret_hash(other)]["account_active"] = False
    now[0] += 1.0
    await auth.authenticate(f"Bearer {other}")  # still cached
    auth.invalidate(account_id="acct_2")
    with pytest.raises(Forbidden, match="deactivated"):
        await auth.authenticate(f"Bearer {other}")

    fresh = "inf_" + "e" * 40
    db.add(fresh)
    await auth.authenticate(f"Bearer {fresh}")
    db.rows[secret_hash(fresh)]["revoked_at"] = datetime.now(timezone.utc)
    now[0] += 2.5  # the TTL bounds a missed invalidation
    with pytest.raises(Forbidden, match="revoked"):
        await auth.authenticate(f"Bearer {fresh}")


async def test_a_lookup_racing_an_invalidation_is_not_cached():
    db = FakeKeys()
    auth = Authenticator(db, cache_secs=60.0)
    raw = "inf_" + "f" * 40
    row = db.add(raw)
    real = db.fetchone

    async def racing(name, params):
        result = await real(name, params)
        auth.invalidate(row["key_id"])  # the revocation lands while this lookup is in flight
        return result
    db.fetchone = racing
    await auth.authenticate(f"Bearer {raw}")
    db.fetchone = real
    db.rows[row["key_hash"]]["revoked_at"] = datetime.now(timezone.utc)
    with pytest.raises(Forbidden):
        await auth.authenticate(f"Bearer {raw}")
