"""`GET /metrics`: the replica's Prometheus metrics (no key; expose it only on your internal network)."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from control_plane.lib.metrics import CONTENT_TYPE_LATEST
from control_plane.runtime import Runtime


@get("/metrics", summary="Prometheus metrics", tags=["health"], include_in_schema=False)
async def metrics(runtime: NamedDependency[Runtime]) -> Response[bytes]:
    m = runtime.dispatcher.metrics
    m.queued.set(runtime.dispatcher.queued_count())
    m.nodes_online.set(runtime.registry.online_count())
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
