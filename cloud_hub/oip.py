"""The Open Inference Protocol's routes besides inference itself: health, server and model
metadata, statistics, Triton's model configuration and model repository extensions, and the
Prometheus ``/metrics`` endpoint. Inference is :mod:`cloud_hub.fastpath`.

Reading routes take the ``infer`` scope, the repository extension the ``admin`` scope.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from protocols import Datatype, ServerMetadata

from . import __version__
from .artifacts import scope_check
from .model_config import TensorConfig
from .repository import LoadedVersion
from .state import HubState

__all__ = ["EXTENSIONS", "router", "triton_config"]

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_repository",
    "statistics",
    "model_configuration",
]
"""Triton's extensions the hub implements, as its server metadata lists them."""

_TRITON_TYPES = {dt: f"TYPE_{'STRING' if dt is Datatype.BYTES else dt.value}" for dt in Datatype}


def router(hub: HubState) -> APIRouter:
    api = APIRouter()
    repository = hub.repository
    infer_scope = Depends(scope_check(hub.access, "infer"))
    admin_scope = Depends(scope_check(hub.access, "admin"))

    # -- health and metadata ---------------------------------------------------------------------

    @api.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": hub.ready}, status_code=200 if hub.ready else 503)

    @api.get("/v2", dependencies=[infer_scope])
    async def server_metadata() -> dict[str, Any]:
        return ServerMetadata(
            name=hub.settings.server_name, version=__version__, extensions=EXTENSIONS
        ).model_dump()

    @api.get("/metrics", response_class=PlainTextResponse)
    async def prometheus(request: Request) -> Response:
        if not hub.settings.metrics_public:
            await scope_check(hub.access, "admin")(request)
        return Response(generate_latest(hub.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v2/models/stats", dependencies=[infer_scope])
    async def all_stats() -> dict[str, Any]:
        return {"model_stats": [v.stats.as_json() for v in repository.loaded()]}

    @api.get("/v2/models/{model}", dependencies=[infer_scope])
    @api.get("/v2/models/{model}/versions/{version}", dependencies=[infer_scope])
    async def model_metadata(model: str, version: str | None = None) -> dict[str, Any]:
        loaded = repository.get(model, version)
        return loaded.metadata(repository.versions(model)).model_dump(exclude_none=True)

    @api.get("/v2/models/{model}/ready", dependencies=[infer_scope])
    @api.get("/v2/models/{model}/versions/{version}/ready", dependencies=[infer_scope])
    async def model_ready(model: str, version: str | None = None) -> dict[str, Any]:
        repository.get(model, version)
        return {"name": model, "ready": True}

    @api.get("/v2/models/{model}/config", dependencies=[infer_scope])
    @api.get("/v2/models/{model}/versions/{version}/config", dependencies=[infer_scope])
    async def model_config(model: str, version: str | None = None) -> dict[str, Any]:
        return triton_config(repository.get(model, version))

    @api.get("/v2/models/{model}/stats", dependencies=[infer_scope])
    @api.get("/v2/models/{model}/versions/{version}/stats", dependencies=[infer_scope])
    async def model_stats(model: str, version: str | None = None) -> dict[str, Any]:
        if version is None:
            repository.get(model)
            versions = [repository.get(model, v) for v in repository.versions(model)]
        else:
            versions = [repository.get(model, version)]
        return {"model_stats": [v.stats.as_json() for v in versions]}

    # -- repository extension --------------------------------------------------------------------

    @api.post("/v2/repository/index", dependencies=[admin_scope])
    async def repository_index() -> list[dict[str, str]]:
        return repository.index()

    @api.post("/v2/repository/models/{model}/load", dependencies=[admin_scope])
    async def load_model(model: str) -> dict[str, Any]:
        await repository.load(model)
        return {}

    @api.post("/v2/repository/models/{model}/unload", dependencies=[admin_scope])
    async def unload_model(model: str) -> dict[str, Any]:
        await repository.unload(model)
        return {}

    return api


def triton_config(loaded: LoadedVersion) -> dict[str, Any]:
    """Triton's model configuration (as JSON) for a loaded version."""
    config = loaded.config

    def tensor(t: TensorConfig) -> dict[str, Any]:
        return {"name": t.name, "data_type": _TRITON_TYPES[t.datatype], "dims": list(t.dims)}

    out: dict[str, Any] = {
        "name": loaded.model,
        "platform": loaded.platform,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": [tensor(t) for t in loaded.inputs],
        "output": [tensor(t) for t in loaded.outputs],
        "instance_group": [{"count": config.instance_count, "kind": "KIND_AUTO"}],
        "runtime": loaded.backend.name,
    }
    policy = config.version_policy
    if policy.all:
        out["version_policy"] = {"all": {}}
    elif policy.specific is not None:
        out["version_policy"] = {"specific": {"versions": policy.specific}}
    else:
        out["version_policy"] = {"latest": {"num_versions": policy.latest or 1}}
    if config.dynamic_batching is not None:
        out["dynamic_batching"] = {
            "preferred_batch_size": config.dynamic_batching.preferred_batch_sizes,
            "max_queue_delay_microseconds": config.dynamic_batching.max_queue_delay_us,
            "default_queue_policy": {
                "max_queue_size": config.dynamic_batching.max_queue_size,
                "default_timeout_microseconds": config.dynamic_batching.default_timeout_us,
            },
        }
    if config.response_cache.enabled:
        out["response_cache"] = {"enable": True}
    return out
