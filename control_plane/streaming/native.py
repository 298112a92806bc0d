"""Native SSE of `/api/v1/jobs`: a `job` event, `token` events (id = sequence number), then `done` or `error`.

Leaving the stream never cancels the job: it keeps running, and `GET /api/v1/jobs/{id}/stream` with
`Last-Event-ID` picks it up again (from any replica: what was missed is replayed from JetStream).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import structlog
from litestar.response import Stream

from control_plane.accounts.auth import Principal
from control_plane.errors import BadRequest, InfernetError
from control_plane.jobs.schemas import JobView, job_view
from control_plane.jobs.service import JobService
from control_plane.routing.schemas import routing_event
from control_plane.streaming import sse
from control_plane.streaming.relay import JobWatch, Slot, TokenRelay
from control_plane.streaming.stream import HEARTBEAT, JobStream, Tokens

log = structlog.get_logger("control_plane.streaming")


def parse_last_event_id(value: str | None) -> int:
    """The sequence number a reconnecting client last saw (0: none)."""
    if value is None or not value.strip():
        return 0
    try:
        seq = int(value.strip())
    except ValueError:
        raise BadRequest(f"Last-Event-ID must be a token sequence number, got {value!r}",
                         param="Last-Event-ID") from None
    if seq < 0:
        raise BadRequest("Last-Event-ID must not be negative", param="Last-Event-ID")
    return seq


def submitted_stream(relay: TokenRelay, slot: Slot, row: dict[str, Any]) -> Stream:
    """The SSE answer to `POST /api/v1/jobs` with `"stream": true`; call right after submit returns."""
    watch = relay.watch(row["id"])
    first = JobView(id=row["id"], status=row["status"], model=row["model"],
                    created_at=job_view(row | {"completed_at": None}).created_at)
    return _response(relay, slot, watch, row, first, after_seq=0)


async def job_stream(relay: TokenRelay, jobs: JobService, principal: Principal, job_id: str, *,
                     last_event_id: str | None) -> Stream:
    """The SSE answer to `GET /api/v1/jobs/{id}/stream` (pending, running or finished jobs)."""
    after_seq = parse_last_event_id(last_event_id)
    slot = relay.admit(principal.account_id)
    watch = relay.watch(job_id)  # before reading the row, so nothing between the two is missed
    try:
        row = await jobs.get(principal, job_id)
    except BaseException:
        relay.unwatch(watch)
        slot.release()
        raise
    return _response(relay, slot, watch, row, job_view(row), after_seq=after_seq)


def _response(relay: TokenRelay, slot: Slot, watch: JobWatch, row: dict[str, Any], first: JobView, *,
              after_seq: int) -> Stream:
    stream = JobStream(relay, watch, row, after_seq=after_seq, heartbeat_s=relay.heartbeat_s)

    def close() -> None:
        relay.unwatch(watch)
        slot.release()
    return sse.sse_response(_events(stream, first, close, routing_event(row)), on_close=close,
                            headers={"X-Job-Id": row["id"]})


async def _events(stream: JobStream, first: JobView, close: Callable[[], None],
                  routing: dict[str, Any] | None = None) -> AsyncGenerator[bytes, None]:
    try:
        if routing is not None:  # model "auto": the decision comes before anything else
            yield sse.event("routing", routing)
        yield sse.event("job", first)
        async for item in stream.events():
            if item is HEARTBEAT:
                yield sse.HEARTBEAT
            elif isinstance(item, Tokens):
                yield b"".join([sse.token(seq, text) for seq, text in item.items])
            else:
                row = item.row
                yield sse.event("done" if row["status"] == "completed" else "error", job_view(row))
    except InfernetError as exc:  # PostgreSQL or NATS failed under this stream: say so rather than cut it
        log.warning("stream_interrupted", job_id=stream.job_id, error=exc.code, detail=exc.message)
        said = exc.message if exc.public else "a service this stream needs is unreachable right now"
        yield sse.event("error", {"id": stream.job_id, "error": exc.code, "error_message":
                                  f"{said}; the job was not cancelled: reconnect with Last-Event-ID"})
    finally:
        close()
