"""Loads the named SQL in queries.sql once and looks statements up by name."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """name -> SQL for every statement in queries.sql."""
    text = resources.files("control_plane.store").joinpath("queries.sql").read_text()
    parts = _NAME.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        if name in found:
            raise ValueError(f"duplicate query name in queries.sql: {name}")
        found[name] = "\n".join(lines).strip().rstrip(";")
    return found


def query(name: str) -> str:
    """The SQL of one named statement; KeyError names the missing query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in queries.sql") from None
