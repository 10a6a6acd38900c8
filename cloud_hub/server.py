"""Run the hub: uvicorn serving the app, graceful on SIGTERM.

On SIGTERM or Ctrl-C uvicorn stops accepting connections and lets in-flight requests finish (up
to ``graceful_shutdown_s``); then the lifespan drains every model's queue and closes backends.
"""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .settings import HubSettings

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
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s) or None,
        lifespan="on",
        server_header=False,
    )
    server = uvicorn.Server(config)
    logger.info(
        "serving %s on http://%s:%d", settings.model_repository, settings.host, settings.port
    )
    server.run()
