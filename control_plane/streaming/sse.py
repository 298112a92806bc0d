"""Server-Sent Events framing and the Litestar response that carries a stream of frames.

Frames are built as bytes directly: every `data:` payload here is compact JSON, which never contains a
raw newline, so each event is one `data:` line and needs no splitting (the hot path stays a few concatenations).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import msgspec
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream
from litestar.response.base import ASGIResponse

_encode = msgspec.json.encode

#: A comment line: ignored by SSE parsers, keeps proxies and load balancers from closing an idle stream.
HEARTBEAT = b": keep-alive\n\n"

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(name: str, payload: object, *, event_id: int | None = None) -> bytes:
    """One named event whose data is `payload` as JSON (Structs, dicts, lists...)."""
    head = b"event: %s\n" % name.encode()
    if event_id is not None:
        head = b"id: %d\n" % event_id + head
    return head + b"data: " + _encode(payload) + b"\n\n"


def token(seq: int, text: str) -> bytes:
    """A native `token` event: id = the chunk's sequence number, data = {"text": ...}."""
    return b'id: %d\nevent: token\ndata: {"text":%b}\n\n' % (seq, _encode(text))


def data(payload: bytes) -> bytes:
    """An unnamed event carrying already-encoded data (the OpenAI chunk format)."""
    return b"data: " + payload + b"\n\n"


class EventStream(Stream):
    """A Stream that keeps its own media type (Litestar's Stream lets the handler's default, JSON, win)."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        kwargs["media_type"] = self.media_type
        return super().to_asgi_response(*args, **kwargs)


def sse_response(body: AsyncGenerator[bytes, None], *, on_close: Callable[[], None],
                 headers: dict[str, str] | None = None) -> Stream:
    """A text/event-stream response. When it ends or the client leaves, the generator is closed and
    `on_close` runs (idempotent cleanup: also when the client left before the generator ever started)."""

    async def close() -> None:
        try:
            await body.aclose()
        finally:
            on_close()

    return EventStream(body, media_type="text/event-stream", headers={**HEADERS, **(headers or {})},
                       background=BackgroundTask(close))
