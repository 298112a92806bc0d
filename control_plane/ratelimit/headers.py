"""The X-RateLimit-* headers: a per-request holder the limiter fills and an ASGI middleware that sends it.

Under /v1 the response also carries OpenAI's names (x-ratelimit-limit-requests, -remaining-requests,
-reset-requests and the -tokens variants; resets as durations like "42s" or "1m5s"), which OpenAI
clients read."""

from __future__ import annotations

import math
import time
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

_HOLDER: ContextVar[dict[str, Any] | None] = ContextVar("infernet_ratelimit_holder", default=None)


@dataclass(frozen=True, slots=True)
class LimitState:
    """A key's budget as one response reports it; reset is the unix time the window ends."""

    limit: int
    remaining: int
    reset: int
    token_limit: int | None = None
    token_remaining: int | None = None

    def with_tokens(self, limit: int, remaining: int) -> LimitState:
        return replace(self, token_limit=limit, token_remaining=remaining)

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = []
        if self.limit:
            out += [(b"x-ratelimit-limit", str(self.limit).encode()),
                    (b"x-ratelimit-remaining", str(self.remaining).encode())]
        out.append((b"x-ratelimit-reset", str(self.reset).encode()))
        if self.token_limit is not None:
            out += [(b"x-ratelimit-limit-tokens", str(self.token_limit).encode()),
                    (b"x-ratelimit-remaining-tokens", str(self.token_remaining).encode())]
        return out


    def openai_headers(self, now: float | None = None) -> list[tuple[bytes, bytes]]:
        """The same budget under OpenAI's header names."""
        reset = duration(self.reset - (time.time() if now is None else now)).encode()
        out = []
        if self.limit:
            out += [(b"x-ratelimit-limit-requests", str(self.limit).encode()),
                    (b"x-ratelimit-remaining-requests", str(self.remaining).encode()),
                    (b"x-ratelimit-reset-requests", reset)]
        if self.token_limit is not None:
            out.append((b"x-ratelimit-reset-tokens", reset))
        return out


def duration(seconds: float) -> str:
    """OpenAI's reset format: "0s", "42s", "1m5s", "2h0m0s" (whole seconds, rounded up)."""
    total = max(math.ceil(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def current_holder() -> dict[str, Any] | None:
    """This request's holder (None outside a request, e.g. in background tasks)."""
    return _HOLDER.get()


def ratelimit_headers_middleware(app):
    """Adds the limiter's last word on this request's key to the response headers (errors included)."""
    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        holder: dict[str, Any] = {}
        token = _HOLDER.set(holder)
        openai = scope.get("path", "").startswith("/v1/")

        async def send_with_limits(message):
            if message["type"] == "http.response.start":
                state = holder.get("state")
                if state is not None:
                    extra = state.openai_headers(holder.get("now")) if openai else []
                    message["headers"] = [*message.get("headers", []), *state.headers(), *extra]
            await send(message)

        try:
            await app(scope, receive, send_with_limits)
        finally:
            _HOLDER.reset(token)

    return middleware
