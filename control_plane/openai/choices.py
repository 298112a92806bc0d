"""`n` > 1 on /v1 chat completions: n independent jobs (seed + i each when a seed is given), answered as one
completion whose choices are numbered 0..n-1; streamed, their chunk streams are merged as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Response
from litestar.background_tasks import BackgroundTasks
from litestar.response import Stream

from control_plane.errors import BadRequest
from control_plane.openai import reshape
from control_plane.openai import schemas as oa
from control_plane.streaming import sse

if TYPE_CHECKING:
    from control_plane.accounts.auth import Principal
    from control_plane.openai.service import OpenAIService

MAX_N = 8
_enc = msgspec.json.encode


def check(body: oa.ChatCompletionRequest, idempotency_key: str | None) -> int:
    """The number of choices asked for (1 when n is absent)."""
    n = 1 if body.n is None else body.n
    if not 1 <= n <= MAX_N:
        raise BadRequest(f"n must be between 1 and {MAX_N}", param="n")
    if n > 1 and idempotency_key:
        raise BadRequest("Idempotency-Key cannot be combined with n > 1 (each choice is its own job)", param="n")
    return n


def _one(body: oa.ChatCompletionRequest, i: int) -> oa.ChatCompletionRequest:
    seed = None if body.seed is None else body.seed + i
    return msgspec.structs.replace(body, n=None, seed=seed)


async def complete(service: OpenAIService, principal: Principal, body: oa.ChatCompletionRequest, n: int, *,
                   request_id: str | None) -> Response[oa.ChatCompletion] | Stream:
    """Run the n jobs; the answer's id and headers are the first job's, usage the sum of all of them."""
    results = await asyncio.gather(*(service.chat(principal, _one(body, i), request_id=request_id) for i in range(n)),
                                   return_exceptions=True)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        for r in results:  # streams already opened: closing them cancels their jobs
            if isinstance(r, Stream) and r.background is not None:
                await r.background()
        raise failed
    answers: list[Any] = list(results)
    if body.stream:
        return _merge(answers, bool(body.stream_options and body.stream_options.include_usage))
    first: oa.ChatCompletion = answers[0].content
    choices = [msgspec.structs.replace(a.content.choices[0], index=i) for i, a in enumerate(answers)]
    usage = oa.CompletionUsage(*(sum(getattr(a.content.usage, f) for a in answers)
                                 for f in ("prompt_tokens", "completion_tokens", "total_tokens")))
    return Response(msgspec.structs.replace(first, choices=choices, usage=usage), headers=dict(answers[0].headers))


def _merge(streams: list[Stream], include_usage: bool) -> Stream:
    """One chunk stream from n: each chunk's choice renumbered to its stream, one usage chunk and [DONE] at the end."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    first_id: list[str] = []

    async def pump(i: int, stream: Stream) -> None:
        try:
            async for item in reshape.frames(stream.iterator):
                await queue.put((i, item))
        finally:
            await queue.put((i, StopAsyncIteration))

    async def body() -> AsyncGenerator[bytes, None]:
        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        running, usage = len(streams), [0, 0, 0]
        last: dict[str, Any] | None = None
        try:
            while running:
                i, item = await queue.get()
                if item is StopAsyncIteration:
                    running -= 1
                elif item is None:
                    yield sse.HEARTBEAT
                elif item is reshape.DONE:
                    continue
                elif "error" in item:
                    yield sse.data(_enc(item))
                    return
                elif not item.get("choices"):
                    u = item.get("usage") or {}
                    usage = [usage[0] + u.get("prompt_tokens", 0), usage[1] + u.get("completion_tokens", 0),
                             usage[2] + u.get("total_tokens", 0)]
                    last = item
                else:
                    first_id.append(item["id"]) if not first_id else None
                    item["id"] = first_id[0]
                    for choice in item["choices"]:
                        choice["index"] = i
                    yield sse.data(_enc(item))
            if include_usage and last is not None:
                last["id"] = first_id[0] if first_id else last["id"]
                last["usage"] = dict(zip(("prompt_tokens", "completion_tokens", "total_tokens"), usage))
                yield sse.data(_enc(last))
            yield b"data: [DONE]\n\n"
        finally:
            for task in tasks:
                task.cancel()

    tasks = BackgroundTasks([s.background for s in streams if s.background is not None])
    headers = {k: v for k, v in streams[0].headers.items() if k.lower() != "content-type"}
    return sse.EventStream(body(), media_type="text/event-stream", headers=headers, background=tasks)
