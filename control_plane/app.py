"""The Litestar application factory: routes, dependencies, error mapping, OpenAPI, lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Request
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from control_plane.accounts.admin import AdminController
from control_plane.accounts.auth import Principal
from control_plane.accounts.controller import KeysController
from control_plane.console import router as console_router
from control_plane.credits.controller import CreditsController
from control_plane.health.controller import healthz, readyz
from control_plane.health.metrics_controller import metrics
from control_plane.jobs.controller import JobsController
from control_plane.jobs.service import JobService
from control_plane.lib import openapi
from control_plane.lib.strict_body import strict_body
from control_plane.lib.input_guard import GuardedRequest, input_guard_middleware
from control_plane.lib.request_id import ensure_request_id, request_id_middleware
from control_plane.ratelimit.headers import ratelimit_headers_middleware
from control_plane.lib.responses import EXCEPTION_HANDLERS
from control_plane.models.controller import ModelsController
from control_plane.nodes.controller import NodesController
from control_plane.runtime import Runtime
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.ollama_api.controller import OllamaController
from control_plane.openai.completions import CompletionsController
from control_plane.openai.controller import OpenAIController
from control_plane.openai.responses import ResponsesController
from control_plane.openai.service import OpenAIService
from control_plane.streaming import TokenRelay
from control_plane.webhooks.controller import WebhooksController


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def provide_principal(request: Request) -> Principal:
    runtime = _runtime(request)
    principal = await runtime.auth.authenticate(request.headers.get("authorization"))
    if runtime.gateway is not None:  # X-RateLimit-* on every authenticated response (submissions spend it)
        await runtime.gateway.limiter.peek(principal)
    await strict_body(request)  # once the caller is known: 401/403 come before a body's 400
    return principal


def provide_runtime(request: Request) -> Runtime:
    return _runtime(request)


def provide_jobs(request: Request) -> JobService:
    return _runtime(request).jobs


def provide_registry(request: Request) -> NodeRegistry:
    return _runtime(request).registry


def provide_relay(request: Request) -> TokenRelay:
    return _runtime(request).relay


def provide_openai(request: Request) -> OpenAIService:
    return _runtime(request).openai


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> Litestar:
    """Build the app; it starts its own Runtime at startup unless one is given (tests, dev)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        own = runtime is None
        app.state.runtime = runtime or await Runtime.start(settings)
        if own:
            # What start-up built lives as long as the process: out of the collector's way, so a full collection
            # (which stalls the event loop for every request) walks only what came later (the nodes, the jobs).
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if own:
                await app.state.runtime.stop()

    app = Litestar(
        route_handlers=[healthz, readyz, metrics, JobsController, ModelsController, NodesController, OpenAIController,
                        CompletionsController, ResponsesController, OllamaController,
                        KeysController, AdminController, CreditsController,
                        WebhooksController, console_router.router, console_router.static_router],
        dependencies={
            "principal": Provide(provide_principal),
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "jobs": Provide(provide_jobs, sync_to_thread=False),
            "registry": Provide(provide_registry, sync_to_thread=False),
            "relay": Provide(provide_relay, sync_to_thread=False),
            "openai_api": Provide(provide_openai, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_id_middleware, input_guard_middleware, ratelimit_headers_middleware],
        request_class=GuardedRequest,
        before_send=[ensure_request_id],
        lifespan=[lifespan, console_router.lifespan],
        template_config=console_router.template_config,
        openapi_config=OpenAPIConfig(
            title="Infernet", version="0.1.0", path="/docs",
            description="Submit inference jobs to an open network of GPU nodes.",
            components=Components(security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", description="API key: inf_...")
            }),
            security=[{"bearer": []}],
        ),
        debug=False,
    )
    openapi.install(app)
    return app
