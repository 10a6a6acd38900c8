"""The hub's HTTP API: the Open Inference Protocol v2, Triton's extensions, and /metrics.

``create_app(settings)`` builds the ASGI application: the inference path
(:mod:`cloud_hub.fastpath`) in front of a FastAPI app for everything else, whose lifespan loads
the repository at start and drains it at shutdown. Every failure is answered as
``{"error": "..."}`` with the status its error class carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from protocols import (
    Datatype,
    ErrorResponse,
    ProtocolError,
    ServerMetadata,
)

from . import __version__, artifacts, capture_api, conversions, fleet, releases
from .access import Access
from .auth import Principal
from .body_limit import BodyLimit
from .capture import Capture, FileShardStore, capture_root
from .errors import HubError, error_headers
from .fastpath import InferencePath
from .metrics import HubMetrics
from .repository import LoadedVersion, ModelRepository
from .service import InferenceService
from .settings import HubSettings

__all__ = ["EXTENSIONS", "create_app"]

logger = logging.getLogger(__name__)

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_repository",
    "statistics",
    "model_configuration",
]

# Every route may answer these, as {"error": ...}; documented so the OpenAPI schema tells the truth.
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": why}
    for status, why in (
        (400, "a request the hub cannot take"),
        (401, "no or bad credentials"),
        (403, "credentials without the scope, or a remote client of a hub without credentials"),
        (404, "no such model, version, job or file"),
        (413, "body over the limit"),
        (429, "rate limit; see Retry-After"),
        (503, "not ready, shutting down, or a full queue"),
    )
}

_TRITON_TYPES = {dt: f"TYPE_{'STRING' if dt is Datatype.BYTES else dt.value}" for dt in Datatype}


def create_app(settings: HubSettings) -> ASGIApp:
    metrics = HubMetrics()
    limits = settings.limits.to_limits()
    access = Access(settings.auth, metrics)
    state: dict[str, Any] = {"ready": False}
    repository = ModelRepository(
        settings.model_repository, metrics, drain_timeout_s=settings.graceful_shutdown_s
    )

    capture = Capture(FileShardStore(capture_root(settings)), metrics)
    service = InferenceService(repository, limits, capture=capture)
    fleet_view = fleet.FleetView(metrics)
    release_store = releases.ReleaseStore(artifacts.ArtifactStore(artifacts.store_root(settings)))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.load_models == "all":
            await repository.load_all()
        elif isinstance(settings.load_models, list):
            for name in settings.load_models:
                try:
                    await repository.load(name)
                except HubError as exc:
                    logger.error("model %s did not load: %s", name, exc.message)
        if settings.mqtt is not None:
            from .mqtt_bridge import MqttBridge

            bridge = MqttBridge(settings.mqtt, service, metrics, on_status=fleet_view.update)
            state["bridge"] = bridge
            await asyncio.to_thread(releases.announce_all, release_store, bridge)
            await bridge.start()
        capture.start()
        state["ready"] = True
        logger.info(
            "hub ready: %d model versions loaded from %s",
            len(repository.loaded()),
            settings.model_repository,
        )
        try:
            yield
        finally:
            state["ready"] = False
            if "bridge" in state:
                await state["bridge"].stop(drain_timeout_s=settings.graceful_shutdown_s)
            await repository.close()
            await asyncio.to_thread(capture.stop)
            logger.info("hub stopped")

    app = FastAPI(
        title="hybrid-inference hub",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        responses=_ERROR_RESPONSES,
    )
    app.state.repository = repository
    app.state.metrics = metrics

    # -- errors ----------------------------------------------------------------------------------

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.message}, status_code=exc.status, headers=dict(error_headers(exc))
        )

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}"
        return JSONResponse({"error": message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"error": f"invalid request: {exc.errors()[0].get('msg', 'invalid')}"}, status_code=400
        )

    # -- access ----------------------------------------------------------------------------------

    def require(scope: str) -> Callable[[Request], Awaitable[Principal | None]]:
        async def check(request: Request) -> Principal | None:
            return access.check(
                request.headers, request.client.host if request.client else None, scope
            )

        return check

    infer_scope = Depends(require("infer"))
    admin_scope = Depends(require("admin"))

    # -- health and metadata ---------------------------------------------------------------------

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.get("/v2", dependencies=[infer_scope])
    async def server_metadata() -> dict[str, Any]:
        return ServerMetadata(
            name=settings.server_name, version=__version__, extensions=EXTENSIONS
        ).model_dump()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus(request: Request) -> Response:
        if not settings.metrics_public:
            await require("admin")(request)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v2/models/stats", dependencies=[infer_scope])
    async def all_stats() -> dict[str, Any]:
        return {"model_stats": [v.stats.as_json() for v in repository.loaded()]}

    @app.get("/v2/models/{model}", dependencies=[infer_scope])
    @app.get("/v2/models/{model}/versions/{version}", dependencies=[infer_scope])
    async def model_metadata(model: str, version: str | None = None) -> dict[str, Any]:
        loaded = repository.get(model, version)
        return loaded.metadata(repository.versions(model)).model_dump(exclude_none=True)

    @app.get("/v2/models/{model}/ready", dependencies=[infer_scope])
    @app.get("/v2/models/{model}/versions/{version}/ready", dependencies=[infer_scope])
    async def model_ready(model: str, version: str | None = None) -> dict[str, Any]:
        repository.get(model, version)
        return {"name": model, "ready": True}

    @app.get("/v2/models/{model}/config", dependencies=[infer_scope])
    @app.get("/v2/models/{model}/versions/{version}/config", dependencies=[infer_scope])
    async def model_config(model: str, version: str | None = None) -> dict[str, Any]:
        return _triton_config(repository.get(model, version))

    @app.get("/v2/models/{model}/stats", dependencies=[infer_scope])
    @app.get("/v2/models/{model}/versions/{version}/stats", dependencies=[infer_scope])
    async def model_stats(model: str, version: str | None = None) -> dict[str, Any]:
        if version is None:
            repository.get(model)
            versions = [repository.get(model, v) for v in repository.versions(model)]
        else:
            versions = [repository.get(model, version)]
        return {"model_stats": [v.stats.as_json() for v in versions]}

    # -- repository extension ----------------------------------------------------------------------

    @app.post("/v2/repository/index", dependencies=[admin_scope])
    async def repository_index() -> list[dict[str, str]]:
        return repository.index()

    @app.post("/v2/repository/models/{model}/load", dependencies=[admin_scope])
    async def load_model(model: str) -> dict[str, Any]:
        await repository.load(model)
        return {}

    @app.post("/v2/repository/models/{model}/unload", dependencies=[admin_scope])
    async def unload_model(model: str) -> dict[str, Any]:
        await repository.unload(model)
        return {}

    app.include_router(artifacts.router(settings, access))
    app.include_router(conversions.router(settings, access, repository))
    app.include_router(fleet.router(fleet_view, access))
    app.include_router(releases.router(settings, access, lambda: state.get("bridge")))
    app.include_router(capture_api.router(capture, access))

    inference = InferencePath(
        app, service=service, access=access, ready=lambda: bool(state["ready"])
    )
    # Outermost, so the inference path and the FastAPI routes share one body limit.
    return BodyLimit(inference, max_bytes=settings.limits.payload_max_bytes, metrics=metrics)


def _triton_config(loaded: LoadedVersion) -> dict[str, Any]:
    config = loaded.config

    def tensor(t: Any) -> dict[str, Any]:
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
