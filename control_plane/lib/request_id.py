"""ASGI middleware: every response carries x-request-id (the caller's own is kept), bound in logs."""

from __future__ import annotations

import re
import uuid

import structlog

_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_middleware(app):
    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _VALID.match(candidate):
                    rid = candidate
                break
        rid = rid or str(uuid.uuid4())
        scope["request_id"] = rid
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)
        raw = rid.encode()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", raw)]
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


def _caller_id(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _VALID.match(candidate) else None
    return None


async def ensure_request_id(message, scope) -> None:
    """before_send hook: answers that never reach a route's middleware (404 no route, 405) get an id too."""
    if message["type"] != "http.response.start":
        return
    headers = message.setdefault("headers", [])
    if any(name.lower() == b"x-request-id" for name, _ in headers):
        return
    rid = scope.get("request_id") or _caller_id(scope) or str(uuid.uuid4())
    message["headers"] = [*headers, (b"x-request-id", rid.encode())]
