"""Rendering helpers shared by the console's controllers: page context, errors in words, form reading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.response import Redirect, Template

from control_plane.console.guard import SECURITY_HEADERS, ConsoleUser, LoginRequired, SESSION_COOKIE, cleared
from control_plane.console.history import MetricsHistory
from control_plane.console.sessions import SessionStore
from control_plane.errors import BadRequest, InfernetError

log = structlog.get_logger("control_plane.console")


@dataclass
class ConsoleState:
    """The console's own parts, one per app: the session store and the metrics history."""

    sessions: SessionStore
    history: MetricsHistory


NAV = [
    ("playground", "/console/playground", "Playground"),
    ("jobs", "/console/jobs", "Jobs"),
    ("keys", "/console/keys", "Keys"),
    ("credits", "/console/credits", "Credits"),
    ("nodes", "/console/nodes", "My nodes"),
]
ADMIN_NAV = [
    ("admin", "/console/admin", "Network"),
    ("accounts", "/console/admin/accounts", "Accounts"),
    ("admin-nodes", "/console/admin/nodes", "All nodes"),
]


def request_id(request: Request) -> str:
    return request.scope.get("request_id") or ""


def render(request: Request, user: ConsoleUser | None, template: str, *, active: str = "", http_status: int = 200,
           cookies: list | None = None, **context: Any) -> Template:
    """A full page: the layout gets the user, navigation, CSRF token and request id."""
    ctx = {"user": user, "nav": NAV, "admin_nav": ADMIN_NAV if user and user.is_admin else [], "active": active,
           "csrf": user.csrf if user else "", "request_id": request_id(request)} | context
    return Template(template, context=ctx, status_code=http_status, cookies=cookies, headers=SECURITY_HEADERS,
                    media_type=MediaType.HTML)


def fragment(request: Request, template: str, **context: Any) -> str:
    """A partial template rendered to a string (live updates send these over SSE)."""
    return request.app.template_engine.get_template(template).render(**context)


def redirect(path: str, **kwargs: Any) -> Redirect:
    return Redirect(path, status_code=303, headers=SECURITY_HEADERS, **kwargs)


def convert(data: dict[str, Any], kind: type) -> Any:
    """A form, as a dict, into the API's own request Struct: the same validation and the same limits."""
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid form: {exc}") from None


def optional_int(form: Any, name: str) -> int | None:
    value = (form.get(name) or "").strip()
    if not value:
        return None
    try:
        return int(value.replace(",", "").replace("_", ""))
    except ValueError:
        raise BadRequest(f"{name.replace('_', ' ')} must be a whole number, got {value!r}", param=name) from None


def wants_json(request: Request) -> bool:
    return request.headers.get("x-console-fetch") == "1"


def _error_page(request: Request, status: int, code: str, message: str) -> Response:
    if wants_json(request):  # the playground's fetch shows the message in place
        return Response({"error": code, "error_message": message, "request_id": request_id(request)},
                        status_code=status, headers=SECURITY_HEADERS)
    user = request.scope.get("console_user")
    return render(request, user, "error.html", http_status=status, code=code, message=message)


def on_login_required(request: Request, exc: LoginRequired) -> Response:
    if wants_json(request) or request.headers.get("accept") == "text/event-stream":
        return Response({"error": "unauthorized", "error_message": exc.message or "signed out: sign in again",
                         "request_id": request_id(request)}, status_code=401, headers=SECURITY_HEADERS)
    target = "/console/login" + ("?expired=1" if exc.message else "")
    return redirect(target, cookies=[cleared(SESSION_COOKIE)])


def on_infernet_error(request: Request, exc: InfernetError) -> Response:
    if exc.status >= 500:
        log.error("console_request_failed", error=exc.code, detail=exc.message, path=request.url.path)
    return _error_page(request, exc.status, exc.code, exc.message)


def on_http_error(request: Request, exc: HTTPException) -> Response:
    if isinstance(exc, ValidationException):
        return _error_page(request, 400, "bad_request", f"invalid request: {exc.detail}")
    if isinstance(exc, NotFoundException):
        return _error_page(request, 404, "not_found", "there is no such page in the console")
    return _error_page(request, exc.status_code, "error", str(exc.detail))


def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("console_unhandled_error", path=request.url.path)
    return _error_page(request, 500, "internal_error",
                       "something went wrong on our side; try again, and quote the request id if it persists")


EXCEPTION_HANDLERS = {LoginRequired: on_login_required, InfernetError: on_infernet_error,
                      HTTPException: on_http_error, Exception: on_unexpected}
