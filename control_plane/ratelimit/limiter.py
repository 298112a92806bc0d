"""Per-key requests and tokens per window, shared by every replica through leases on a PostgreSQL counter.

Each replica leases a chunk of a key's budget for the current window (one upsert on
`rate_limit_windows`, which never grants past the limit) and spends it locally, so most requests cost no
database round trip. Chunks shrink as the shared counter nears the limit (down to one unit), so all
replicas together never admit more than the limit, and a replica refuses at most a chunk's worth early
while another holds unspent units. A replica that saw the budget exhausted refuses locally until the
window ends. Tokens are charged at admission as prompt estimate + max_tokens (what the request may use).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from control_plane.errors import RateLimited
from control_plane.ratelimit.headers import LimitState, current_holder
from control_plane.settings import Settings
from control_plane.store import Database, StoreError

log = structlog.get_logger("control_plane.ratelimit")

#: A lease is at most this share of the limit...
LEASE_SHARE = 20
#: ...and at most this share of what is left in the window.
LEASE_OF_REMAINING = 8
_KEEP_WINDOWS_S = 3600


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's budget per window; 0 means unlimited."""

    requests: int
    tokens: int


@dataclass(slots=True)
class _Bucket:
    window: int = -1
    local: int = 0  # units leased by this replica and not yet spent
    seen: int = 0  # the shared counter (all replicas' leases) as of this replica's last lease or read
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def limits_for(principal: Any, settings: Settings) -> Limits:
    """The key's own limits when it has them (None: plan default), else the settings' plan default."""
    rpm = getattr(principal, "rate_limit_rpm", None)
    tpm = getattr(principal, "rate_limit_tpm", None)
    return Limits(settings.rate_limit_rpm if rpm is None else int(rpm),
                  settings.rate_limit_tpm if tpm is None else int(tpm))


def budget_limits_for(principal: Any, settings: Settings) -> tuple[str, Limits] | None:
    """The shared budget a minted key also spends (the minting key's id and limits), or None."""
    budget_key = getattr(principal, "budget_key_id", None)
    if not budget_key:
        return None
    rpm = getattr(principal, "budget_rpm", None)
    tpm = getattr(principal, "budget_tpm", None)
    return budget_key, Limits(settings.rate_limit_rpm if rpm is None else int(rpm),
                              settings.rate_limit_tpm if tpm is None else int(tpm))


def lease_size(limit: int, seen: int) -> int:
    return max(1, min(limit // LEASE_SHARE, (limit - seen) // LEASE_OF_REMAINING))


class RateLimiter:
    """Admits inference requests per key; fills the response's X-RateLimit-* headers."""

    def __init__(self, db: Database, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._settings = settings
        self.window_s = max(1, int(settings.rate_limit_window_s))
        self.clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def window_start(self) -> int:
        now = int(self.clock())
        return now - now % self.window_s

    # -- the hot path ----------------------------------------------------------------------------
    async def admit(self, principal: Any, *, tokens: int) -> LimitState | None:
        """Count one inference request of about `tokens` tokens, or raise RateLimited (429 with Retry-After).

        A key minted by another non-admin key also spends from that key's budget, so minting keys never
        multiplies what an account may use.
        """
        limits = limits_for(principal, self._settings)
        window = self.window_start()
        budget = budget_limits_for(principal, self._settings)
        if budget is not None:
            await self._admit_shared(principal, budget[0], budget[1], tokens, window)
        state = None
        if limits.requests > 0:
            ok, remaining = await self._take(principal.key_id, "requests", 1, limits.requests, window)
            state = LimitState(limits.requests, remaining, window + self.window_s)
            if not ok:
                self._refuse(principal, state, f"more than {limits.requests} requests {self._per()}")
        if limits.tokens > 0:
            if tokens > limits.tokens:
                self._publish(state)
                raise RateLimited(
                    f"this request may use about {tokens} tokens (prompt + max_tokens), more than the key's "
                    f"limit of {limits.tokens} tokens {self._per()}; lower max_tokens or raise the key's limit")
            ok, remaining_tokens = await self._take(principal.key_id, "tokens", tokens, limits.tokens, window)
            state = (state or LimitState(0, 0, window + self.window_s)).with_tokens(limits.tokens, remaining_tokens)
            if not ok:
                self._refuse(principal, state, f"more than {limits.tokens} tokens {self._per()}")
        self._publish(state)
        return state

    async def peek(self, principal: Any) -> LimitState | None:
        """The key's request budget without spending any (for the headers of non-inference responses)."""
        limits = limits_for(principal, self._settings)
        if limits.requests <= 0:
            return None
        window = self.window_start()
        bucket = self._buckets.setdefault((principal.key_id, "requests"), _Bucket())
        if bucket.window != window:
            async with bucket.lock:
                if bucket.window != window:
                    row = await self._db.fetchone("ratelimit_used", {
                        "key_id": principal.key_id, "window_start": window, "dim": "requests"})
                    bucket.window, bucket.local, bucket.seen = window, 0, int(row["used"]) if row else 0
        state = LimitState(limits.requests, max(0, limits.requests - bucket.seen + bucket.local), window + self.window_s)
        self._publish(state)
        return state

    # -- internals -------------------------------------------------------------------------------
    async def _admit_shared(self, principal: Any, budget_key: str, limits: Limits, tokens: int, window: int) -> None:
        """Spend from the minting key's budget; 429 (naming that key) when it is used up."""
        reset = window + self.window_s
        if limits.requests > 0:
            ok, remaining = await self._take(budget_key, "requests", 1, limits.requests, window)
            if not ok:
                self._refuse(principal, LimitState(limits.requests, remaining, reset),
                             f"more than {limits.requests} requests {self._per()} together with the other keys "
                             f"sharing the budget of key {budget_key}")
        if limits.tokens > 0:
            ok, remaining = await self._take(budget_key, "tokens", tokens, limits.tokens, window)
            if not ok:
                self._refuse(principal, LimitState(0, 0, reset).with_tokens(limits.tokens, remaining),
                             f"more than {limits.tokens} tokens {self._per()} together with the other keys "
                             f"sharing the budget of key {budget_key}")

    def _per(self) -> str:
        return "per minute" if self.window_s == 60 else f"per {self.window_s} s"

    def _publish(self, state: LimitState | None) -> None:
        holder = current_holder()
        if holder is not None and state is not None:
            holder["state"] = state
            holder["now"] = self.clock()  # the limiter's clock, for resets given as durations

    def _refuse(self, principal: Any, state: LimitState, what: str) -> None:
        self._publish(state)
        retry = max(1, math.ceil(state.reset - self.clock()))
        log.info("rate_limited", key_id=principal.key_id, detail=what, retry_after_s=retry)
        raise RateLimited(f"rate limit reached for key {principal.key_id}: {what}; retry in {retry} s",
                          headers={"Retry-After": str(retry)})

    async def _take(self, key_id: str, dim: str, cost: int, limit: int, window: int) -> tuple[bool, int]:
        """Spend `cost` units from the local lease, leasing more from the shared counter when short."""
        bucket = self._buckets.get((key_id, dim))
        if bucket is None:
            bucket = self._buckets[(key_id, dim)] = _Bucket()
        async with bucket.lock:
            if bucket.window != window:
                bucket.window, bucket.local, bucket.seen = window, 0, 0
            if bucket.local >= cost:
                bucket.local -= cost
                return True, max(0, limit - bucket.seen + bucket.local)
            need = cost - bucket.local
            if bucket.seen + need > limit:  # the shared counter only grows within a window
                return False, max(0, limit - bucket.seen + bucket.local)
            ask = max(need, lease_size(limit, bucket.seen))
            try:
                row = await self._db.fetchone("ratelimit_lease", {
                    "key_id": key_id, "window_start": window, "dim": dim, "need": need, "ask": ask, "limit": limit})
            except StoreError as exc:
                # Fail open: a database hiccup must not turn every request away; the job insert will tell.
                log.warning("rate_limit_unchecked", key_id=key_id, error=str(exc))
                return True, max(0, limit - bucket.seen)
            bucket.seen = int(row["used"])
            granted = int(row["granted"])
            if granted < need:
                return False, max(0, limit - bucket.seen + bucket.local)
            bucket.local += granted - cost
            return True, max(0, limit - bucket.seen + bucket.local)

    async def run(self) -> None:
        """Forget finished windows: this replica's buckets, and old shared rows (any replica may do it)."""
        while True:
            await asyncio.sleep(max(self.window_s, 30))
            window = self.window_start()
            for key in [k for k, b in self._buckets.items() if b.window < window and not b.lock.locked()]:
                del self._buckets[key]
            try:
                await self._db.execute("ratelimit_forget", {"before": window - _KEEP_WINDOWS_S})
            except StoreError as exc:
                log.warning("rate_limit_cleanup_failed", error=str(exc))
