"""Who is signed in, and what protects the console: session cookie, CSRF tokens, security headers.

The browser holds only a random session token in an HttpOnly, SameSite=Strict cookie scoped to /console;
PostgreSQL maps it to the API key it signed in with, and every request resolves that key through the same
Authenticator as the API. Every write must carry the session's CSRF token (a hidden `_csrf` form field or
an `X-CSRF-Token` header), compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from litestar import Request
from litestar.datastructures import Cookie

from control_plane.accounts.auth import Principal
from control_plane.console.sessions import SESSION_TTL_S, Session, SessionStore
from control_plane.errors import Forbidden, InfernetError

SESSION_COOKIE = "infernet_console"
#: Before sign-in there is no session: the login form's CSRF token is double-submitted (cookie + form field).
LOGIN_COOKIE = "infernet_console_login"
PATH = "/console"

#: No inline script or style anywhere: everything the pages run or style with is a file under /console/static.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; manifest-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class LoginRequired(Exception):
    """No live session (or its key can no longer be used): the browser goes to the sign-in page."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class CsrfRefused(Forbidden):
    """A console write without the session's CSRF token."""

    def __init__(self) -> None:
        super().__init__("this form expired or did not come from the console (missing or wrong CSRF token); "
                         "reload the page and try again")


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """The signed-in caller: the API's Principal plus what the page header shows."""

    principal: Principal
    session: Session

    @property
    def account_name(self) -> str:
        return self.session.account_name

    @property
    def csrf(self) -> str:
        return self.session.csrf_token

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin


def secure(request: Request) -> bool:
    """Mark cookies Secure when the browser reached us over HTTPS (directly or through a TLS proxy)."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def session_cookie(request: Request, token: str) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value=token, path=PATH, httponly=True, samesite="strict",
                  secure=secure(request), max_age=SESSION_TTL_S)


def cleared(key: str) -> Cookie:
    return Cookie(key=key, value="", path=PATH, httponly=True, samesite="strict", max_age=0)


def login_cookie(request: Request) -> tuple[str, Cookie | None]:
    """The sign-in form's CSRF token: the one the browser already holds, else a new one to set."""
    current = request.cookies.get(LOGIN_COOKIE)
    if current and 20 <= len(current) <= 128:
        return current, None
    token = secrets.token_urlsafe(32)
    return token, Cookie(key=LOGIN_COOKIE, value=token, path=PATH, httponly=True, samesite="strict",
                         secure=secure(request), max_age=3600)


async def current_user(request: Request, sessions: SessionStore, runtime) -> ConsoleUser:
    """The signed-in user, or LoginRequired; the session's key is checked like a bearer key, every time."""
    session = await sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise LoginRequired()
    try:
        principal = await runtime.auth.authenticate_key_id(session.key_id)
    except InfernetError as exc:
        if exc.status in (401, 403):
            await sessions.close(session.token)
            raise LoginRequired(exc.message) from None
        raise
    return ConsoleUser(principal=principal, session=session)


async def require_csrf(request: Request, expected: str) -> None:
    """Refuse (403) a write whose CSRF token is missing or wrong."""
    sent = request.headers.get("x-csrf-token")
    if not sent:
        form = await request.form()
        sent = form.get("_csrf")
    if not isinstance(sent, str) or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfRefused()
