"""Run the hub: uvicorn serving the app (and the gRPC listener in its loop), graceful on SIGTERM.

On SIGTERM or Ctrl-C uvicorn stops accepting connections and lets in-flight requests finish (up
to ``graceful_shutdown_s``); then the lifespan drains every model's queue and closes backends.
"""

from __future__ import annotations

import logging
import ssl

import uvicorn

from .app import create_app
from .settings import HubSettings
from .tls import http_context

__all__ = ["run"]

logger = logging.getLogger(__name__)


def run(settings: HubSettings) -> None:
    if settings.loopback_only:
        if settings.host_is_loopback():
            logger.warning("no API keys or JWT configured: serving loopback clients only")
        else:
            logger.warning(
                "no API keys or JWT configured: listening on %s but answering loopback clients only "
                "(403 for everyone else); configure auth to serve the network",
                settings.host,
            )
    app = create_app(settings, serve_grpc=True)
    tls = settings.tls
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=tls.cert_file if tls else None,
        ssl_keyfile=tls.key_file if tls else None,
        ssl_ca_certs=str(tls.client_ca_file) if tls and tls.client_ca_file else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca_file else ssl.CERT_NONE,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s) or None,
        lifespan="on",
        server_header=False,
    )
    if tls is not None:
        # uvicorn's own context cannot take renewed files; this one reloads them by itself.
        context = http_context(tls)
        config.load()
        config.ssl = context
    server = uvicorn.Server(config)
    logger.info(
        "serving %s on %s://%s:%d",
        settings.model_repository,
        "https" if tls else "http",
        settings.host,
        settings.port,
    )
    server.run()
