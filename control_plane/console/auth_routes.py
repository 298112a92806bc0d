"""Signing in and out of the console: with an API key, or with a one-time login link."""

from __future__ import annotations

from typing import Annotated

import hmac

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from control_plane.console.guard import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    ConsoleUser,
    cleared,
    login_cookie,
    require_csrf,
    session_cookie,
)
from control_plane.console.pages import ConsoleState, redirect, render
from control_plane.errors import InfernetError
from control_plane.runtime import Runtime


def _login_page(request: Request, *, error: str | None = None, status: int = 200, note: str | None = None):
    token, cookie = login_cookie(request)
    return render(request, None, "login.html", http_status=status, login_csrf=token, error=error, note=note,
                  cookies=[cookie] if cookie else None)


class ConsoleAuthController(Controller):
    path = "/console"

    @get("/login", name="console_login")
    async def login_form(self, request: Request,
                         expired: Annotated[str | None, QueryParameter(required=False)] = None) -> object:
        note = "Your session ended (its key was revoked or expired). Sign in again." if expired else None
        return _login_page(request, note=note)

    @post("/login")
    async def login(self, request: Request, console: NamedDependency[ConsoleState],
                    runtime: NamedDependency[Runtime]) -> object:
        form = await request.form()
        sent, expected = form.get("_csrf") or "", request.cookies.get(LOGIN_COOKIE) or ""
        if not expected or not hmac.compare_digest(str(sent).encode(), expected.encode()):
            return _login_page(request, status=403,
                               error="This sign-in form expired (missing or wrong CSRF token). Try again.")
        key = str(form.get("api_key") or "").strip()
        if not key:
            return _login_page(request, status=400, error="Paste an API key (it starts with inf_).")
        try:
            principal = await runtime.auth.authenticate(f"Bearer {key}")
        except InfernetError as exc:
            return _login_page(request, status=exc.status, error=exc.message)
        token, _ = await console.sessions.open(principal.key_id)
        return redirect("/console/", cookies=[session_cookie(request, token), cleared(LOGIN_COOKIE)])

    @get("/login/{token:str}")
    async def login_link(self, request: Request, token: FromPath[str], console: NamedDependency[ConsoleState],
                         runtime: NamedDependency[Runtime]) -> object:
        key_id = await console.sessions.redeem_login_link(token)
        if key_id is None:
            return _login_page(request, status=400, error="This sign-in link was already used or has expired. "
                                                          "Sign in with an API key instead.")
        try:
            await runtime.auth.authenticate_key_id(key_id)
        except InfernetError as exc:
            return _login_page(request, status=exc.status, error=exc.message)
        session, _ = await console.sessions.open(key_id)
        return redirect("/console/", cookies=[session_cookie(request, session)])

    @post("/logout")
    async def logout(self, request: Request, user: NamedDependency[ConsoleUser],
                     console: NamedDependency[ConsoleState]) -> object:
        await require_csrf(request, user.csrf)
        await console.sessions.close(request.cookies.get(SESSION_COOKIE))
        return redirect("/console/login", cookies=[cleared(SESSION_COOKIE)])

    @get("/")
    async def home(self, user: NamedDependency[ConsoleUser]) -> object:
        return redirect("/console/admin" if user.is_admin else "/console/playground")
