"""The event loop the node agent runs on: uvloop (libuv) when installed, else asyncio's own."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on uvloop: the agent relays engine output to NATS, and every socket event and task step
    costs markedly less CPU there (see docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:  # not installed on this platform (Windows): asyncio's loop works the same, slower
        return asyncio.run(main)
    return uvloop.run(main)
