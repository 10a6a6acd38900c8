"""``inference.GRPCInferenceService``: the hub's service, repository and access over gRPC.

Each RPC checks access as HTTP does (``authorization`` or ``x-api-key`` metadata, scopes, rate
limits, loopback-only without credentials), then calls the same :class:`InferenceService` and
:class:`ModelRepository`. Errors become the status codes Triton gives for them (see
:func:`status_code`); RPCs the hub does not offer (shared memory, trace and log settings) answer
``UNIMPLEMENTED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from protocols import ProtocolError

from .. import __version__
from ..errors import (
    BadRequestError,
    HubError,
    ModelNotFoundError,
    ModelNotLoadedError,
    RateLimitedError,
    UnavailableError,
)
from ..oip import EXTENSIONS, triton_config
from ..repository import LoadedVersion, ModelRepository
from ..service import SERVED_BY
from .codec import decode_infer_request, encode_infer_response

if TYPE_CHECKING:
    from ..state import HubState

__all__ = ["InferenceServicer", "status_code"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_BY_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

STREAM_MAX_IN_FLIGHT = 256
"""Requests of one ``ModelStreamInfer`` call running at once; the stream reads no further."""


def status_code(exc: HubError | ProtocolError) -> grpc.StatusCode:
    """Triton's code for an error: bad input ``INVALID_ARGUMENT``, an unknown model or version
    ``NOT_FOUND``, a known model serving no version, a full queue or a hub not ready
    ``UNAVAILABLE``; credentials ``UNAUTHENTICATED``/``PERMISSION_DENIED``; limits
    ``RESOURCE_EXHAUSTED``; anything else ``INTERNAL``."""
    if isinstance(exc, ModelNotLoadedError):
        return grpc.StatusCode.UNAVAILABLE
    return _BY_STATUS.get(exc.status, grpc.StatusCode.INTERNAL)


def _client_host(peer: str) -> str | None:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:%5B::1%5D:5000`` -> the address; ``None`` otherwise."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        host = urllib.parse.unquote(rest).rpartition(":")[0]
        return host.strip("[]")
    return None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, hub: HubState) -> None:
        self._hub = hub
        self._service = hub.service
        self._repository: ModelRepository = hub.repository
        self._access = hub.access
        self._server_name = hub.settings.server_name

    def _ready(self) -> bool:
        return self._hub.ready

    # -- plumbing --------------------------------------------------------------------------------

    def _check(self, context: grpc.aio.ServicerContext, scope: str) -> None:
        metadata = {
            k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)
        }
        self._access.check(metadata, _client_host(context.peer()), scope)

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        scope: str | None,
        body: Callable[[], Awaitable[_T]],
    ) -> _T:
        try:
            if scope is not None:
                self._check(context, scope)
            return await body()
        except (HubError, ProtocolError) as exc:
            await _abort(context, exc)
        except Exception:
            logger.exception("gRPC call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable")  # abort raises

    def _deadline_s(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None or math.isinf(remaining) else max(remaining, 0.0)

    async def _infer(self, request: Any, timeout_s: float | None) -> Any:
        if not self._ready():
            raise UnavailableError("the hub is not ready")
        decoded = decode_infer_request(request, self._service.limits)
        loaded, result = await self._service.run(
            request.model_name, request.model_version or None, decoded, timeout_s=timeout_s
        )
        return encode_infer_response(
            result,
            model_name=request.model_name,
            model_version=str(loaded.version),
            id=request.id,
            parameters={"served_by": SERVED_BY},
        )

    # -- health and metadata ---------------------------------------------------------------------

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            return pb.ServerMetadataResponse(
                name=self._server_name, version=__version__, extensions=EXTENSIONS
            )

        return await self._call(context, "infer", body)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            try:
                self._repository.get(request.name, request.version or None)
            except ModelNotFoundError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._call(context, "infer", body)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            loaded = self._repository.get(request.name, request.version or None)
            meta = loaded.metadata(self._repository.versions(request.name))
            return pb.ModelMetadataResponse(
                name=meta.name,
                versions=meta.versions or [],
                platform=meta.platform,
                inputs=[_tensor_metadata(t) for t in meta.inputs],
                outputs=[_tensor_metadata(t) for t in meta.outputs],
            )

        return await self._call(context, "infer", body)

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            loaded = self._repository.get(request.name, request.version or None)
            config = json_format.ParseDict(
                triton_config(loaded), config_pb.ModelConfig(), ignore_unknown_fields=True
            )
            return pb.ModelConfigResponse(config=config)

        return await self._call(context, "infer", body)

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            versions: list[LoadedVersion]
            if not request.name:
                versions = self._repository.loaded()
            elif not request.version:
                self._repository.get(request.name)
                versions = [
                    self._repository.get(request.name, v)
                    for v in self._repository.versions(request.name)
                ]
            else:
                versions = [self._repository.get(request.name, request.version)]
            return json_format.ParseDict(
                {"model_stats": [v.stats.as_json() for v in versions]},
                pb.ModelStatisticsResponse(),
                ignore_unknown_fields=True,
            )

        return await self._call(context, "infer", body)

    # -- inference -------------------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._call(
            context, "infer", lambda: self._infer(request, self._deadline_s(context))
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Requests of one stream run concurrently (so they batch together); each answer, or
        its error as ``error_message``, goes back as it completes; a bad request ends nothing."""
        answers: asyncio.Queue[Any] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_MAX_IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            try:
                self._check(context, "infer")
                response = await self._infer(request, None)
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
            except (HubError, ProtocolError) as exc:
                answers.put_nowait(_stream_error(request, exc))
            except Exception:
                logger.exception("streamed inference failed")
                answers.put_nowait(
                    pb.ModelStreamInferResponse(
                        error_message="internal error",
                        infer_response=pb.ModelInferResponse(
                            model_name=request.model_name, id=request.id
                        ),
                    )
                )
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(one(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                answer = await answers.get()
                if answer is None:
                    break
                yield answer
            await reader
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    # -- repository extension --------------------------------------------------------------------

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            entries = self._repository.index()
            if request.ready:
                entries = [e for e in entries if e["state"] == "READY"]
            return pb.RepositoryIndexResponse(
                models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries]
            )

        return await self._call(context, "admin", body)

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            _repository_name(request.repository_name)
            if request.parameters:
                raise BadRequestError(
                    "load parameters (config overrides, model files) are not supported; "
                    "change the model's folder in the repository and load it again"
                )
            await self._repository.load(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self._call(context, "admin", body)

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            _repository_name(request.repository_name)
            await self._repository.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._call(context, "admin", body)


def _repository_name(name: str) -> None:
    if name:
        raise BadRequestError(
            f"this hub serves one repository; leave repository_name empty, not {name!r}"
        )


def _tensor_metadata(t: Any) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=t.name, datatype=t.datatype.value, shape=t.shape
    )


def _stream_error(request: Any, exc: HubError | ProtocolError) -> Any:
    message = exc.message if isinstance(exc, HubError) else str(exc)
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
    )


async def _abort(context: grpc.aio.ServicerContext, exc: HubError | ProtocolError) -> None:
    if isinstance(exc, HubError):
        message = exc.message
        if isinstance(exc, RateLimitedError):
            context.set_trailing_metadata(
                (("retry-after", str(max(1, math.ceil(exc.retry_after_s)))),)
            )
    else:
        message = str(exc)
    await context.abort(status_code(exc), message)
