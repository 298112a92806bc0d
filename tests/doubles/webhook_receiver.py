"""A webhook receiver for tests: records every POST, answers with scripted statuses, then 200."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import uvicorn

from tests.doubles.asgi import read_body
from tests.fixtures.ports import free_port
from tests.fixtures.waiting import wait_until


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """`async with WebhookReceiver(fail_first=2) as rx:` -> rx.url; rx.received; rx.statuses (scripted answers)."""

    def __init__(self, *, fail_first: int = 0, fail_status: int = 500, host: str = "127.0.0.1") -> None:
        self.host = host
        self.statuses: list[int] = [fail_status] * fail_first
        self.always: int | None = None  # answer every request with this status
        self.received: list[Received] = []
        self._arrived = asyncio.Event()
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks/infernet"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if body is None:
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(scope["path"], headers, body))
        self._arrived.set()
        status = self.always or (self.statuses.pop(0) if self.statuses else 200)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"not now"})

    async def __aenter__(self) -> WebhookReceiver:
        config = uvicorn.Config(self, host=self.host, port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve())
        await wait_until(lambda: self._server.started, timeout=30, message="webhook receiver did not start")
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
