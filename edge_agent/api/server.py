"""The local API's listening socket: TCP (``host:port``) or a Unix socket, one thread per
connection (the standard library's threading servers).

At most ``max_connections`` are open. When a new connection finds them all taken, the one that
has waited longest on its client (idle between requests, or still sending a request's headers
or body) is closed to make room; only when every connection is running a request is the new
one answered 503. So clients that trickle bytes cannot keep others out."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import socketserver
import sys
import threading
import time
from typing import Any, cast

from ..addresses import TcpAddress, UnixAddress
from ..errors import ConfigError
from .handler import ApiContext, ApiHandler

__all__ = ["ApiServer"]

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
UNIX_SOCKET_MODE = 0o660


_TOO_MANY = json.dumps({"error": "too many open connections to the agent; retry later"}).encode()
_TOO_MANY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(_TOO_MANY)}\r\nConnection: close\r\n\r\n".encode()
    + _TOO_MANY
)


class _ServerMixin(socketserver.ThreadingMixIn):
    """One thread per connection, at most ``context.max_connections`` of them: kept-alive
    connections each hold a thread, so a client that opens thousands must not get thousands."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    context: ApiContext

    def _init_limits(self, context: ApiContext) -> None:
        self.context = context
        self._open = 0
        self._open_lock = threading.Lock()
        self._waiting_since: dict[Any, float] = {}
        """Open connections waiting on their client, and since when (monotonic)."""
        self.evicted = 0

    def mark_waiting(self, connection: Any, waiting: bool) -> None:
        with self._open_lock:
            if waiting:
                self._waiting_since.setdefault(connection, time.monotonic())
            else:
                self._waiting_since.pop(connection, None)

    def _evict_one(self) -> bool:
        """Under the lock: close the connection waiting longest on its client."""
        if not self._waiting_since:
            return False
        victim = min(self._waiting_since, key=self._waiting_since.__getitem__)
        del self._waiting_since[victim]
        with contextlib.suppress(OSError):
            victim.shutdown(socket.SHUT_RDWR)
        self.evicted += 1
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            full = self._open >= self.context.max_connections
            if full and self._evict_one():
                logger.info("closed the longest-waiting connection to make room for a new one")
                full = False
            if not full:
                self._open += 1
                self._waiting_since[request] = time.monotonic()
        if full:
            logger.warning("refused a connection: %d are open", self.context.max_connections)
            with contextlib.suppress(OSError):
                request.sendall(_TOO_MANY_ANSWER)
            cast(socketserver.TCPServer, self).shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._closed_one(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed_one(request)

    def _closed_one(self, request: Any = None) -> None:
        with self._open_lock:
            self._open -= 1
            self._waiting_since.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is no error of ours: logged at debug level, no traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            logger.debug("a local API client went away: %s", error)
            return
        logger.exception("error on a local API connection")


class _TcpServer(_ServerMixin, socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, address: TcpAddress, context: ApiContext) -> None:
        self._init_limits(context)
        self.address_family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        super().__init__((address.host, address.port), ApiHandler)


class _UnixServer(_ServerMixin, socketserver.UnixStreamServer):
    def __init__(self, address: UnixAddress, context: ApiContext) -> None:
        self._init_limits(context)
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
        # Non-blocking: a connection that vanishes between select and accept must not block the
        # accept loop (handle_request then returns at once).
        self._server.socket.setblocking(False)
        self._wake_reader, self._wake_writer = socket.socketpair()

    @property
    def address(self) -> TcpAddress | UnixAddress:
        """The bound address (with the real port when 0 was asked for)."""
        if isinstance(self._requested, UnixAddress):
            return self._requested
        bound = cast(tuple[Any, ...], self._server.server_address)
        return TcpAddress(host=str(bound[0]), port=int(bound[1]))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="edge-agent-api", daemon=True)
        self._thread.start()
        logger.info("local API on %s", _url(self.address))

    def _serve(self) -> None:
        """Accept until woken: no polling while idle, and ``close`` takes effect at once
        (``serve_forever`` would wake every poll interval and wait for the next one to stop)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_reader:
                        return
                    self._server.handle_request()

    def close(self) -> None:
        """Stop accepting and close the socket. Open keep-alive connections die with the process."""
        if self._thread is not None:
            self._wake_writer.send(b"x")
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self._wake_reader.close()
        self._wake_writer.close()
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
