"""Finds the dev stack's `.infernet/dev.env` from the current directory up and applies it under the environment."""

from __future__ import annotations

import os
from pathlib import Path

from protocol.devenv import DEV_ENV_PATH, parse


def find(start: Path | None = None) -> Path | None:
    """`.infernet/dev.env` in the current directory or the nearest parent that has one."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / DEV_ENV_PATH
        if candidate.is_file():
            return candidate
    return None


def apply(keys: set[str] | None = None, start: Path | None = None) -> Path | None:
    """Set the file's variables that the environment does not set already (the environment wins); only `keys`
    when given. Returns the file used, or None."""
    path = find(start)
    if path is None:
        return None
    try:
        values = parse(path.read_text())
    except OSError:
        return None
    for key, value in values.items():
        if (keys is None or key in keys) and not os.environ.get(key):
            os.environ[key] = value
    return path
