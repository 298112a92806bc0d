"""Jinja filters for the console's templates: numbers, credits, durations and times in words."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from control_plane.console.views import ago


def num(value: Any, digits: int = 0) -> str:
    if value is None or value == "":
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:,.{digits}f}"


def credits(value: Any) -> str:
    """Whole credits with thousands separators (1,000,000 credits = 1 USD by convention)."""
    return "–" if value is None else f"{int(value):,}"


def ms(value: Any) -> str:
    if value is None:
        return "–"
    value = float(value)
    return f"{value:,.0f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def _timestamp(iso: str | None, words: Callable[[datetime], str]) -> str:
    """`words` of an ISO 8601 timestamp; a dash for none, the text itself when it is not one."""
    if not iso:
        return "–"
    try:
        ts = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return words(ts)


def since(iso: str | None) -> str:
    """'5 s ago' for an ISO 8601 timestamp."""
    return _timestamp(iso, lambda ts: ago((datetime.now(timezone.utc) - ts).total_seconds()))


def when(iso: str | None) -> str:
    """A readable UTC time for an ISO 8601 timestamp."""
    return _timestamp(iso, lambda ts: ts.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))


def install(env) -> None:
    env.filters.update(num=num, credits=credits, ms=ms, since=since, when=when)
    env.trim_blocks = True
    env.lstrip_blocks = True
