"""Webhook signatures: `Infernet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""

from __future__ import annotations

import hashlib
import hmac
import time

from control_plane.lib.ids import random_secret

HEADER = "Infernet-Signature"
#: Receivers should refuse signatures older than this (replays).
TOLERANCE_SECS = 300


def new_secret() -> str:
    return "whsec_" + random_secret(40)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The Infernet-Signature header value for a body sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, now: float | None = None,
           tolerance: float = TOLERANCE_SECS) -> bool:
    """What a receiver does: recompute the HMAC, compare in constant time, and refuse stale timestamps."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))
