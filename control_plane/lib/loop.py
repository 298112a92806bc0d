"""The event loop the control plane serves on: uvloop (libuv) when installed, else asyncio's own."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on uvloop: each socket event, callback and task step costs markedly less CPU there, and a
    replica does little else than move small messages between HTTP, NATS and PostgreSQL sockets."""
    try:
        import uvloop
    except ImportError:  # not installed on this platform (Windows): asyncio's loop works the same, slower
        return asyncio.run(main)
    return uvloop.run(main)
