"""`/healthz` (process alive) and `/readyz` (PostgreSQL and NATS reachable, results recordable); no key needed."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from control_plane.runtime import Runtime


@get("/healthz", summary="Liveness", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: PostgreSQL and NATS reachable, job results recordable", tags=["health"])
async def readyz(runtime: NamedDependency[Runtime]) -> Response[dict]:
    db_ok = await runtime.db.ping()
    nats_ok = runtime.bus.connected
    results_ok = runtime.recorder.ready
    ready = db_ok and nats_ok and results_ok
    body = {"status": "ok" if ready else "unavailable",
            "postgres": "ok" if db_ok else "unreachable", "nats": "ok" if nats_ok else "unreachable",
            # "recovering": the results stream or its consumer is missing and being recreated.
            "results": "ok" if results_ok else "recovering",
            # "warming" right after start: nodes may not have advertised yet, so unknown models are queued, not refused.
            "registry": "warm" if runtime.sweeper.warm else "warming", "nodes_online": runtime.registry.online_count()}
    return Response(body, status_code=200 if ready else 503)
