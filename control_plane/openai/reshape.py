"""Re-shape a /v1 chat completion (a response or its chunk stream) into another API's answer: legacy
completions, the Responses API and the Ollama-compatible API are chat completions underneath."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Callable
from typing import Any

import msgspec
from litestar import Response
from litestar.response import Stream

from control_plane.streaming import sse

#: What a transform gets for each frame of the chat stream: a chunk, an {"error": ...} object, or DONE.
DONE = object()
_decode = msgspec.json.decode


async def frames(stream: AsyncIterable[bytes]) -> AsyncGenerator[Any, None]:
    """The events of an OpenAI chunk stream, decoded (heartbeat comments are yielded as None)."""
    async for piece in stream:
        for frame in piece.split(b"\n\n"):
            if frame.startswith(b"data: [DONE]"):
                yield DONE
            elif frame.startswith(b"data: "):
                yield _decode(frame[6:])
            elif frame.startswith(b":"):
                yield None


def restream(original: Stream, body: AsyncGenerator[bytes, None], *, media_type: str = "text/event-stream",
             headers: dict[str, str] | None = None) -> Stream:
    """A response streaming `body` (built over `original`'s frames) that keeps `original`'s headers and cleanup
    (closing it cancels the job, as for the chat stream)."""
    kept = {k: v for k, v in original.headers.items() if k.lower() != "content-type"}
    response = sse.EventStream(body, media_type=media_type, headers={**kept, **(headers or {})},
                               background=original.background)
    return response


def completion(response: Response) -> tuple[dict[str, Any], dict[str, str]]:
    """A non-streamed chat completion as a plain dict, and its headers."""
    return msgspec.to_builtins(response.content), dict(response.headers)


Transform = Callable[[Any], list[bytes]]
