"""The gRPC listener: a ``grpc.aio`` server in the hub's event loop, beside uvicorn.

It shares the loop (and so the batchers, which belong to it) with the HTTP API; the app's
lifespan starts it before the hub reports ready and stops it, letting calls in flight finish for
up to ``graceful_shutdown_s``, before the models are drained.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ..errors import ConfigError
from ..tls import grpc_credentials
from .service import InferenceServicer

if TYPE_CHECKING:
    from ..state import HubState

__all__ = ["GrpcListener"]

logger = logging.getLogger(__name__)


class GrpcListener:
    """``inference.GRPCInferenceService`` on ``settings.host:settings.grpc_port``."""

    def __init__(self, hub: HubState) -> None:
        self._settings = hub.settings
        self._servicer = InferenceServicer(hub)
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        settings = self._settings
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", settings.limits.payload_max_bytes),
            ("grpc.max_send_message_length", -1),
            # Two hubs on one port would split the calls between them unnoticed.
            ("grpc.so_reuseport", 0),
        ]
        if settings.grpc_window_bytes:
            # A fixed window: the bandwidth probe would overwrite it on every probe.
            options += [
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", settings.grpc_window_bytes),
            ]
        server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self._servicer, server)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        address = f"{host}:{settings.grpc_port}"
        try:
            if settings.tls is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, grpc_credentials(settings.tls))
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"cannot listen for gRPC on {address}")
        await server.start()
        self._server = server
        self.port = port
        logger.info(
            "serving gRPC on %s://%s:%d", "grpcs" if settings.tls else "grpc", settings.host, port
        )

    async def stop(self, grace_s: float) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
