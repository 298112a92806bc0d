"""Live views: each open page holds one SSE stream on which the server pushes its fragment when it changes.

The server re-renders the fragment every second and sends it only when it differs, plus a keep-alive
comment now and then; the key behind the session is re-checked every few seconds, so revoking it ends
every live view within seconds. The browser's EventSource reconnects by itself.
"""

from __future__ import annotations

from typing import Annotated

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from control_plane.accounts.auth import require_admin
from control_plane.console import consumer, operator, views
from control_plane.console.admin import admin_nodes_context
from control_plane.console.guard import SECURITY_HEADERS, ConsoleUser, LoginRequired, current_user
from control_plane.console.pages import ConsoleState, fragment
from control_plane.errors import InfernetError
from control_plane.runtime import Runtime

TICK_S = 1.0
RECHECK_S = 5.0
KEEPALIVE_S = 15.0


def _live(request: Request, console: ConsoleState, runtime: Runtime, template: str,
          context: Callable[[], Awaitable[dict]], *, final: Callable[[dict], bool] | None = None) -> ServerSentEvent:
    async def events() -> AsyncGenerator[ServerSentEventMessage, None]:
        last, sent_at, checked_at = None, time.monotonic(), time.monotonic()
        while True:
            now = time.monotonic()
            if now - checked_at >= RECHECK_S:
                checked_at = now
                try:
                    await current_user(request, console.sessions, runtime)
                except LoginRequired:
                    yield ServerSentEventMessage(event="signed-out", data="signed out")
                    return
                except InfernetError:  # PostgreSQL hiccup: check again next time rather than drop the stream
                    pass
            try:
                ctx = await context()
                html = fragment(request, template, **ctx)
            except InfernetError as exc:  # e.g. PostgreSQL unreachable: say so in place, keep trying
                ctx, html = {}, f'<p class="alert alert-error">Live update failed: {exc.message}</p>'
            if html != last:
                last, sent_at = html, now
                yield ServerSentEventMessage(event="fragment", data=html)
                if final is not None and ctx and final(ctx):
                    yield ServerSentEventMessage(event="end", data="end")  # the page stops listening
                    return
            elif now - sent_at >= KEEPALIVE_S:
                sent_at = now
                yield ServerSentEventMessage(comment="keep-alive")
            await asyncio.sleep(TICK_S)
    return ServerSentEvent(events(), headers=SECURITY_HEADERS)


class LiveController(Controller):
    path = "/console/live"

    @get("/jobs")
    async def jobs(self, request: Request, user: NamedDependency[ConsoleUser], runtime: NamedDependency[Runtime],
                   console: NamedDependency[ConsoleState],
                   status: Annotated[str | None, QueryParameter(required=False)] = None,
                   model: Annotated[str | None, QueryParameter(required=False)] = None) -> ServerSentEvent:
        status, model = consumer.filters_of(status, model)
        return _live(request, console, runtime, "_jobs_table.html",
                     lambda: consumer.jobs_table(runtime, user, status, model))

    @get("/jobs/{job_id:str}")
    async def job(self, request: Request, job_id: FromPath[str], user: NamedDependency[ConsoleUser],
                  runtime: NamedDependency[Runtime], console: NamedDependency[ConsoleState]) -> ServerSentEvent:
        await consumer.job_panel(runtime, user, job_id)  # 404 now, before the stream, for anyone else's job

        async def context() -> dict:
            return await consumer.job_panel(runtime, user, job_id) | {"csrf": user.csrf}
        return _live(request, console, runtime, "_job_panel.html", context,
                     final=lambda ctx: ctx["job"].status in ("completed", "failed", "cancelled"))

    @get("/nodes")
    async def nodes(self, request: Request, user: NamedDependency[ConsoleUser], runtime: NamedDependency[Runtime],
                    console: NamedDependency[ConsoleState]) -> ServerSentEvent:
        async def context() -> dict:
            return await operator.operator_context(runtime, user) | {"csrf": user.csrf}
        return _live(request, console, runtime, "_nodes_table.html", context)

    @get("/admin")
    async def admin(self, request: Request, user: NamedDependency[ConsoleUser], runtime: NamedDependency[Runtime],
                    console: NamedDependency[ConsoleState]) -> ServerSentEvent:
        require_admin(user.principal, "the network overview")

        async def context() -> dict:
            return {"o": await views.overview(runtime, console.history)}
        return _live(request, console, runtime, "_overview.html", context)

    @get("/admin/nodes")
    async def admin_nodes(self, request: Request, user: NamedDependency[ConsoleUser],
                          runtime: NamedDependency[Runtime], console: NamedDependency[ConsoleState]) -> ServerSentEvent:
        require_admin(user.principal, "listing every node")

        async def context() -> dict:
            return await admin_nodes_context(runtime) | {"csrf": user.csrf}
        return _live(request, console, runtime, "_nodes_table.html", context)
