"""Assembles the console: its routes under /console (kept out of the OpenAPI document), templates, static
files, error pages, and the background sampler of this replica's metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from litestar import Litestar, Request, Router
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.datastructures import CacheControlHeader
from litestar.di import Provide
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from control_plane.console import filters, history
from control_plane.console.admin import AdminConsoleController
from control_plane.console.auth_routes import ConsoleAuthController
from control_plane.console.consumer import ConsumerController
from control_plane.console.guard import ConsoleUser, current_user
from control_plane.console.live import LiveController
from control_plane.console.operator import OperatorController
from control_plane.console.pages import EXCEPTION_HANDLERS, ConsoleState
from control_plane.console.sessions import SessionStore

HERE = Path(__file__).parent


def _state(request: Request) -> ConsoleState:
    return request.app.state.console


async def _user(request: Request) -> ConsoleUser:
    state: ConsoleState = request.app.state.console
    user = await current_user(request, state.sessions, request.app.state.runtime)
    request.scope["console_user"] = user  # error pages keep the header and navigation
    return user


def _engine_setup(engine: JinjaTemplateEngine) -> None:
    filters.install(engine.engine)


#: Templates of the console (the app's only templates).
template_config = TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine,
                                 engine_callback=_engine_setup)

router = Router(
    path="/",
    route_handlers=[ConsoleAuthController, ConsumerController, OperatorController, AdminConsoleController,
                    LiveController],
    dependencies={"console": Provide(_state, sync_to_thread=False), "user": Provide(_user)},
    exception_handlers=EXCEPTION_HANDLERS,
    include_in_schema=False,
)

static_router = create_static_files_router(
    path="/console/static", directories=[HERE / "static"], name="console_static", include_in_schema=False,
    cache_control=CacheControlHeader(max_age=300, public=True),
)


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """The console's state on the app, and its sampler task, for as long as the app runs."""
    runtime = app.state.runtime
    state = ConsoleState(sessions=SessionStore(runtime.db), history=history.MetricsHistory(runtime.dispatcher.metrics))
    app.state.console = state
    task = asyncio.create_task(history.run(state.history, runtime, state.sessions), name="console-sampler")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
