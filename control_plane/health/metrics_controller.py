"""`GET /metrics` on the public API: admin keys only (the internal listener serves it without a key)."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from control_plane.accounts.auth import Principal, require_admin
from control_plane.health.metrics_listener import scrape
from control_plane.lib.metrics import CONTENT_TYPE_LATEST
from control_plane.runtime import Runtime


@get("/metrics", summary="Prometheus metrics (admin keys; or INFERNET_METRICS_PORT without a key)",
     tags=["health"], include_in_schema=False)
async def metrics(principal: NamedDependency[Principal], runtime: NamedDependency[Runtime]) -> Response[bytes]:
    require_admin(principal, "reading /metrics on the public port")
    return Response(scrape(runtime.dispatcher, runtime.registry), media_type=CONTENT_TYPE_LATEST)
