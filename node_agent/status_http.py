"""A tiny HTTP server for operators and Prometheus: GET /metrics, GET /status (JSON), GET /healthz."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import structlog

from node_agent.metrics import CONTENT_TYPE_LATEST

log = structlog.get_logger("node_agent.status_http")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}


class StatusServer:
    """Serves the agent's metrics and status snapshot; plain asyncio, no framework, one request per connection."""

    def __init__(self, host: str, port: int, *, metrics: Callable[[], bytes], status: Callable[[], dict[str, Any]]):
        self.host = host
        self.port = port
        self._metrics = metrics
        self._status = status
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("status_http_listening", url=f"http://{self.host}:{self.port}", paths=["/metrics", "/status"])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET\n"
            elif path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, self._metrics()
            elif path == "/status":
                status, ctype, body = 200, "application/json", json.dumps(self._status()).encode()
            elif path == "/healthz":
                status, ctype, body = 200, "text/plain", b"ok\n"
            else:
                status, ctype, body = 404, "text/plain", b"try /metrics or /status\n"
            writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()
