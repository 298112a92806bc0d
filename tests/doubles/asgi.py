"""ASGI pieces the test doubles share."""

from __future__ import annotations

from collections.abc import Callable


async def read_body(receive: Callable) -> bytes | None:
    """The whole request body, however many messages it comes in; None when the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
