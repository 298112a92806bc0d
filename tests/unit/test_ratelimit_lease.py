"""Lease sizing and headers of the rate limiter (pure parts)."""

from __future__ import annotations

from control_plane.accounts.auth import Principal
from control_plane.ratelimit.headers import LimitState
from control_plane.ratelimit.limiter import Limits, lease_size, limits_for
from control_plane.settings import Settings


def test_leases_shrink_to_one_near_the_limit():
    assert lease_size(10, 0) == 1  # small limits: exact, one unit per lease
    assert lease_size(600, 0) == 30
    assert lease_size(600, 400) == 25
    assert lease_size(600, 590) == 1
    assert lease_size(2_000_000, 0) == 100_000


def test_limits_from_the_key_else_the_plan():
    settings = Settings(rate_limit_rpm=60, rate_limit_tpm=1000)
    assert limits_for(Principal("k", "a"), settings) == Limits(60, 1000)
    assert limits_for(Principal("k", "a", rate_limit_rpm=5, rate_limit_tpm=None), settings) == Limits(5, 1000)


def test_headers():
    state = LimitState(60, 47, 1746020400).with_tokens(1000, 10)
    assert dict(state.headers()) == {
        b"x-ratelimit-limit": b"60", b"x-ratelimit-remaining": b"47", b"x-ratelimit-reset": b"1746020400",
        b"x-ratelimit-limit-tokens": b"1000", b"x-ratelimit-remaining-tokens": b"10"}
