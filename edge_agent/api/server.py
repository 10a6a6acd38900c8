"""The local API's listening socket: TCP (``host:port``) or a Unix socket, one thread per
connection (the standard library's threading servers)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import threading
from typing import Any, cast

from ..addresses import TcpAddress, UnixAddress
from ..errors import ConfigError
from .handler import ApiContext, ApiHandler

__all__ = ["ApiServer"]

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
UNIX_SOCKET_MODE = 0o660


class _ServerMixin:
    context: ApiContext

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("error on a local API connection")


class _TcpServer(_ServerMixin, socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: TcpAddress, context: ApiContext) -> None:
        self.context = context
        self.address_family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        super().__init__((address.host, address.port), ApiHandler)


class _UnixServer(_ServerMixin, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: UnixAddress, context: ApiContext) -> None:
        self.context = context
        super().__init__(str(address.path), ApiHandler)


class ApiServer:
    """Binds at construction (so a busy port fails before models load); serves after ``start``."""

    def __init__(self, address: TcpAddress | UnixAddress, context: ApiContext) -> None:
        self._thread: threading.Thread | None = None
        self._server: _TcpServer | _UnixServer
        try:
            if isinstance(address, UnixAddress):
                _clear_stale_socket(address)
                self._server = _UnixServer(address, context)
                os.chmod(address.path, UNIX_SOCKET_MODE)
            else:
                self._server = _TcpServer(address, context)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
        self._requested = address

    @property
    def address(self) -> TcpAddress | UnixAddress:
        """The bound address (with the real port when 0 was asked for)."""
        if isinstance(self._requested, UnixAddress):
            return self._requested
        bound = cast(tuple[Any, ...], self._server.server_address)
        return TcpAddress(host=str(bound[0]), port=int(bound[1]))

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="edge-agent-api",
            daemon=True,
        )
        self._thread.start()
        logger.info("local API on %s", _url(self.address))

    def close(self) -> None:
        """Stop accepting and close the socket. Open keep-alive connections die with the process."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        if isinstance(self._requested, UnixAddress):
            with contextlib.suppress(FileNotFoundError):
                self._requested.path.unlink()


def _url(address: TcpAddress | UnixAddress) -> str:
    return str(address) if isinstance(address, UnixAddress) else f"http://{address}"


def _clear_stale_socket(address: UnixAddress) -> None:
    """Remove a socket file left by a process that died, but never steal a live one."""
    path = address.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_socket():
        raise ConfigError(f"cannot listen on {address}: the path exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise ConfigError(f"cannot listen on {address}: another process is listening there")
