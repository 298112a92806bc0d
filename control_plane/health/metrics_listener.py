"""The internal metrics listener: `GET /metrics` without a key on INFERNET_METRICS_HOST:INFERNET_METRICS_PORT.

Meant for a private interface (the default host is 127.0.0.1) that only Prometheus reaches; the public API
port answers /metrics to admin keys only. Plain HTTP/1.1 with `Connection: close`: one scrape per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from control_plane.lib.metrics import CONTENT_TYPE_LATEST

log = structlog.get_logger("control_plane.metrics")
_MAX_REQUEST_HEAD = 16 * 1024


def scrape(dispatcher: Any, registry: Any) -> bytes:
    """The replica's metrics in Prometheus' text format, gauges brought up to date first."""
    m = dispatcher.metrics
    m.queued.set(dispatcher.queued_count())
    m.nodes_online.set(registry.online_count())
    return m.render()


async def serve_metrics(render: Callable[[], bytes], host: str, port: int) -> None:
    """Serve `render()` at /metrics on host:port until cancelled."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, _, rest = head[:_MAX_REQUEST_HEAD].partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method == b"GET" and path == b"/metrics":
                status, kind, body = b"200 OK", CONTENT_TYPE_LATEST.encode(), render()
            else:
                status, kind, body = b"404 Not Found", b"text/plain", b"only GET /metrics is served here\n"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_client, host, port, limit=_MAX_REQUEST_HEAD)
    log.info("metrics_listener_started", host=host, port=port)
    async with server:
        await server.serve_forever()
