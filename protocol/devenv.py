"""The dev stack's `.infernet/dev.env`: shell-sourceable `KEY=value` lines both CLIs read inside the project."""

from __future__ import annotations

import shlex

#: Where `infernet-control-plane dev` writes it, relative to the directory it runs in.
DEV_ENV_PATH = ".infernet/dev.env"


def render(values: dict[str, str], header: str = "") -> str:
    """`export KEY=value` lines (quoted for the shell), after `#` comment lines from `header`."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"export {key}={shlex.quote(str(value))}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, str]:
    """The variables of a file written by `render` (or any `KEY=value` / `export KEY=value` lines)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, raw = line.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            continue
        try:
            parts = shlex.split(raw)
        except ValueError:
            continue
        values[key] = parts[0] if parts else ""
    return values
