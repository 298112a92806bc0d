"""`GET /api/v1/models`: models at least one online node has, with node counts and tokens/sec."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from msgspec import Struct

from control_plane.accounts.auth import Principal
from control_plane.errors import NotFound
from control_plane.scheduler.registry import NodeRegistry


class ModelEntry(Struct):
    id: str
    nodes: int
    avg_tokens_per_second: float | None


class ModelList(Struct):
    models: list[ModelEntry]


class ModelHealth(Struct):
    model: str
    status: str  # ready | loading | unavailable


class ModelsController(Controller):
    path = "/api/v1/models"
    tags = ["models"]

    @get("/", summary="List models available on the network")
    async def list_models(self, principal: NamedDependency[Principal], registry: NamedDependency[NodeRegistry]) -> ModelList:
        entries = []
        for model, nodes, tps in registry.models_summary():
            entries.append(ModelEntry(id=model, nodes=nodes, avg_tokens_per_second=None if tps is None else round(tps, 1)))
        entries.sort(key=lambda e: e.id)
        return ModelList(models=entries)

    @get("/{model_path:path}", summary="Model health: ready, loading or unavailable (GET /api/v1/models/{id}/health)")
    async def model_health(self, model_path: FromPath[str], principal: NamedDependency[Principal],
                           registry: NamedDependency[NodeRegistry]) -> ModelHealth:
        model = model_path.strip("/")
        if not model.endswith("/health") or model == "/health":
            raise NotFound(f"no route for /api/v1/models/{model}; use /api/v1/models/{{id}}/health")
        model = model.removesuffix("/health")
        return ModelHealth(model=model, status=registry.model_health(model))
