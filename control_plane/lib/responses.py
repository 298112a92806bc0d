"""Maps every error to the caller's envelope: {error, error_message}, RFC 9457 problem+json, or OpenAI's."""

from __future__ import annotations

import re
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)

from control_plane.errors import InfernetError

log = structlog.get_logger("control_plane.errors")

PROBLEM_TYPE_BASE = "https://infernet.dev/errors/"

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    422: "Unprocessable Content", 429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable",
}

# OpenAI's envelope puts a "type" on each error; the SDK keys its exception classes off the status.
_OPENAI_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
    403: "permission_error", 404: "not_found_error", 409: "invalid_request_error",
    429: "rate_limit_error", 500: "server_error", 503: "server_error",
}


def error_response(
    request: Request, status: int, code: str, message: str, *, param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    """Render one error in the envelope the caller speaks."""
    path = request.url.path
    if path.startswith("/api/") and not path.startswith("/api/v1/"):  # the Ollama-compatible API: Ollama's envelope
        return Response({"error": message}, status_code=status, headers=headers, media_type="application/json")
    if path.startswith("/v1/"):
        body: dict[str, Any] = {
            "error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"),
                      "code": code, "param": param}
        }
        return Response(body, status_code=status, headers=headers, media_type="application/json")
    if request.headers.get("x-api-version") == "2":
        body = {"type": PROBLEM_TYPE_BASE + code, "title": _TITLES.get(status, "Error"),
                "status": status, "detail": message, "code": code}
        if param:
            body["param"] = param
        return Response(body, status_code=status, headers=headers, media_type="application/problem+json")
    return Response({"error": code, "error_message": message}, status_code=status, headers=headers,
                    media_type="application/json")


_MISSING = re.compile(r"missing required field `([^`]+)`")
_AT = re.compile(r" - at (?:`key` in )?`\$\.?([^`]*)`")  # "`key` in": a mapping's key was refused


def _body_field(message: str) -> str | None:
    """The body field a msgspec validation message is about: `messages[0].role` from "... - at `$.messages[0]`"."""
    at = _AT.search(message)
    where = at.group(1) if at else ""
    missing = _MISSING.search(message)
    if missing:
        return f"{where}.{missing.group(1)}" if where else missing.group(1)
    return where or None


def _validation_message(exc: ValidationException) -> tuple[str, str | None]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts, param = [], None
    for item in extra:
        if isinstance(item, dict):
            key = item.get("key")
            message = str(item.get("message"))
            if key == "data" or (key is None and item.get("source") == "body"):
                key = _body_field(message) or "body"  # the request body: name the field inside it
                message = _AT.sub("", message)
            elif key and (missing := _MISSING.search(message)):
                key = f"{key}.{missing.group(1)}"  # Litestar names the object; the field inside it is missing
            param = param or key
            parts.append(f"{key}: {message}" if key else message)
    if parts:
        return "invalid request: " + "; ".join(parts), param
    return f"invalid request: {exc.detail}", None


#: What the caller reads when an error's own text is not for them (a database driver's message, say).
HIDDEN_MESSAGE = "something went wrong on our side; retry, and quote the x-request-id if it persists"
UNAVAILABLE_MESSAGE = ("a service this request needs (the database) is unreachable right now; retry shortly, and "
                       "quote the x-request-id if it persists")


def handle_infernet_error(request: Request, exc: InfernetError) -> Response[Any]:
    if exc.status >= 500 or not exc.public:
        log.error("request_failed", error=exc.code, detail=exc.message, path=request.url.path)
    message = exc.message if exc.public else (UNAVAILABLE_MESSAGE if exc.status == 503 else HIDDEN_MESSAGE)
    return error_response(request, exc.status, exc.code, message, param=exc.param, headers=exc.headers)


def handle_http_exception(request: Request, exc: HTTPException) -> Response[Any]:
    if isinstance(exc, ValidationException):
        message, param = _validation_message(exc)
        return error_response(request, 400, "bad_request", message, param=param)
    if isinstance(exc, NotFoundException):
        return error_response(request, 404, "not_found", f"no route for {request.method} {request.url.path}")
    if isinstance(exc, MethodNotAllowedException):
        allow = (exc.headers or {}).get("allow") or (exc.headers or {}).get("Allow")
        return error_response(request, 405, "method_not_allowed",
                              f"{request.method} is not allowed on {request.url.path}"
                              + (f"; it accepts {allow}" if allow else ""), headers=exc.headers)
    status = exc.status_code
    code = {401: "unauthorized", 403: "forbidden", 413: "payload_too_large", 429: "rate_limited"}.get(status, "bad_request" if status < 500 else "internal_error")
    return error_response(request, status, code, str(exc.detail), headers=exc.headers)


def handle_unexpected(request: Request, exc: Exception) -> Response[Any]:
    log.exception("unhandled_error", path=request.url.path, method=request.method)
    return error_response(request, 500, "internal_error", HIDDEN_MESSAGE)


EXCEPTION_HANDLERS = {
    InfernetError: handle_infernet_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
