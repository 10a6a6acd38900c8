"""The local API's HTTP/1.1 handler (standard library only: no web framework on the device).

Hardened against hostile and slow clients: the request line and headers must arrive within
``header_timeout_s`` of the first byte, a body within ``header_timeout_s`` plus its length at
``body_min_bytes_per_s``; a connection waiting for a request, its headers or its body can be
closed to make room for a new one (:mod:`.server`), so slow clients cannot hold every slot.
Every status, those of the HTTP layer too (400, 408, 413, 414, 431, 505), is answered with
``{"error": ...}``; any method on a known route that is not its own is a 405; conflicting or
repeated ``Content-Length`` headers, and ``Content-Length`` together with ``Transfer-Encoding``,
are a 400 (RFC 9112 section 6.3). A client that goes away is logged at debug level.

Connections are kept alive. Every answer is written with one ``write`` (headers and body
together) and ``TCP_NODELAY`` set, so small answers do not wait on Nagle's algorithm. A body is
refused by its ``Content-Length`` before it is read (413); after any answer sent without reading
the request's body, the connection is closed so the unread bytes are never taken for a request.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol, cast

from protocols import (
    HEADER_LENGTH_HEADER,
    EncodedBody,
    Limits,
    PayloadTooLargeError,
    ProtocolError,
    check_request_id,
    decode_request,
    parse_header_length,
)

from ..cloud.calls import QueuedCall
from ..errors import AgentError, HttpRequestError, ModelNotReadyError
from ..lifecycle import RequestGate
from ..memory import LARGE_REQUEST_BYTES, release_free_memory
from ..metrics import UNKNOWN_MODEL, AgentMetrics
from ..registry import ModelRegistry, ModelState
from ..reply import ReplyFormat
from ..router import QueuedResult, Router
from .answers import encode_answer
from .queued import location, pending_body, queued_answer
from .routes import Endpoint, Route, match_route

__all__ = ["EXTENSIONS", "ApiContext", "ApiHandler"]

logger = logging.getLogger(__name__)

EXTENSIONS = ("binary_tensor_data", "classification")
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
Buffer = bytes | bytearray | memoryview
LINGER_S = 2.0
LINGER_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiContext:
    """What the handler needs from the agent; one per server."""

    registry: ModelRegistry
    router: Router
    metrics: AgentMetrics
    gate: RequestGate
    limits: Limits
    server_name: str
    server_version: str
    status: Callable[[], dict[str, Any]]
    idle_timeout_s: float
    max_connections: int
    header_timeout_s: float = 10.0
    body_min_bytes_per_s: int = 256 * 1024


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each bounded by the time left to ``deadline`` (monotonic): a
    client sending one byte now and then cannot stretch a request past it (``TimeoutError``)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = float("inf")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _HasContext(Protocol):
    context: ApiContext


class _ClientGoneError(Exception):
    """The client went away mid-request; there is nobody to answer."""


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edge-agent"
    sys_version = ""

    context: ApiContext
    _unread_body: bool = False
    _linger: bool = False
    _body_length: int = 0

    def setup(self) -> None:
        self.context = cast(_HasContext, self.server).context
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = _DeadlineReader(self.connection)
        self._buffered = io.BufferedReader(self._reader, 64 * 1024)
        self.rfile = self._buffered

    def _waiting(self, waiting: bool) -> None:
        """Tell the server whether this connection waits on its client (it may then be closed
        to make room) or runs a request (it may not)."""
        mark = getattr(self.server, "mark_waiting", None)
        if mark is not None:
            mark(self.connection, waiting)

    def handle_one_request(self) -> None:
        """One request: the first byte within ``idle_timeout_s``, the request line and headers
        within ``header_timeout_s`` of it; then any method is dispatched (405 on a known route
        that does not take it)."""
        ctx = self.context
        self._waiting(True)
        self._reader.deadline = time.monotonic() + ctx.idle_timeout_s
        try:
            if not self._buffered.peek(1):
                self.close_connection = True
                return
        except OSError:  # idle past the timeout, reset, or closed to make room
            self.close_connection = True
            return
        self._reader.deadline = time.monotonic() + ctx.header_timeout_s
        try:
            self.raw_requestline = self.rfile.readline(65537)
            for _ in range(8):  # RFC 9112 section 2.2: empty lines before a request are ignored
                if self.raw_requestline not in (b"\r\n", b"\n"):
                    break
                self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = ""
                self.request_version = ""
                self.command = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
        except TimeoutError:
            self._timed_out("the request line and headers")
            return
        except OSError:
            self.close_connection = True
            return
        self._dispatch()
        self._waiting(True)

    def _timed_out(self, what: str) -> None:
        self.close_connection = True
        if not hasattr(self, "command") or self.command is None:
            self.command = ""
            self.request_version = "HTTP/1.1"
            self.requestline = ""
        with contextlib.suppress(OSError):
            self._send_json(
                408,
                {"error": f"{what} did not arrive within the agent's deadline"},
                close=True,
            )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The HTTP layer's own errors (400, 414, 431, 505...) as ``{"error": ...}``; the
        connection is closed, as the rest of what the client sent cannot be trusted."""
        text = message or HTTPStatus(code).description or HTTPStatus(code).phrase
        if not getattr(self, "request_version", None):
            self.request_version = "HTTP/1.1"
        try:
            self._send_json(code, {"error": text}, close=True)
        except OSError:
            self.close_connection = True

    # -- dispatch ---------------------------------------------------------------------------

    def handle_expect_100(self) -> bool:
        """Refuse an oversized body before the client sends it (curl waits for 100 Continue)."""
        try:
            length = self._declared_length()
        except HttpRequestError:
            length = None
        if length is not None and length > self.context.limits.payload_max_bytes:
            self._unread_body = True
            self._send_json(413, {"error": str(self._too_large(length))}, close=True)
            return False
        return super().handle_expect_100()

    def _dispatch(self) -> None:
        self._unread_body = "Transfer-Encoding" in self.headers or self.headers.get(
            "Content-Length", "0"
        ).strip() not in ("", "0")
        if not self._unread_body:
            self._waiting(False)
        try:
            self._check_framing()
            route = match_route(self.command, self.path)
            if route.endpoint is Endpoint.INFER:
                self._infer(route)
                return
            if route.endpoint is Endpoint.REQUEST:
                assert route.request_id is not None
                self._send_request_state(route.request_id)
                return
            status, payload = self._get(route)
            self._send_json(status, payload)
        except HttpRequestError as exc:
            self._send_json(exc.status, {"error": str(exc)}, headers=exc.headers)
        except (AgentError, ProtocolError) as exc:
            self._send_json(exc.status, {"error": str(exc)})
        except (_ClientGoneError, ConnectionError):
            self.close_connection = True
        except TimeoutError:
            self._timed_out("the request body")
        except Exception:
            logger.exception("internal error on %s %s", self.command, self.path)
            self._send_json(500, {"error": "internal error; the agent's log has the details"})

    # -- GET endpoints ----------------------------------------------------------------------

    def _get(self, route: Route) -> tuple[int, dict[str, Any]]:
        ctx = self.context
        if route.endpoint is Endpoint.LIVE:
            return 200, {"live": True}
        if route.endpoint is Endpoint.READY:
            reason = self._not_ready_reason()
            if reason is None:
                return 200, {"ready": True}
            return 503, {"ready": False, "error": reason}
        if route.endpoint is Endpoint.SERVER_METADATA:
            return 200, {
                "name": ctx.server_name,
                "version": ctx.server_version,
                "extensions": list(EXTENSIONS),
            }
        if route.endpoint is Endpoint.STATUS:
            return 200, ctx.status()
        assert route.model is not None
        if route.endpoint is Endpoint.MODEL_READY:
            try:
                ctx.registry.get(route.model, route.version)
            except ModelNotReadyError as exc:
                return 503, {"name": route.model, "ready": False, "error": str(exc)}
            return 200, {"name": route.model, "ready": True}
        model = ctx.registry.get(route.model, route.version)
        return 200, model.metadata().model_dump(mode="json", exclude_none=True)

    def _not_ready_reason(self) -> str | None:
        ctx = self.context
        if ctx.gate.draining:
            return "the agent is draining before it stops"
        states = [status.state for status in ctx.registry.statuses()]
        if ModelState.LOADING in states:
            return "models are still loading"
        if not states:
            return "no models are configured"
        if ModelState.READY not in states:
            return "no model loaded; /status has the reasons"
        return None

    # -- inference --------------------------------------------------------------------------

    def _infer(self, route: Route) -> None:
        ctx = self.context
        start = time.perf_counter()
        assert route.model is not None
        label = route.model if ctx.router.knows(route.model) else UNKNOWN_MODEL
        if not ctx.gate.enter():
            ctx.metrics.error(label, "draining")
            self._send_json(
                503,
                {"error": "the agent is draining before it stops; retry on a new connection later"},
                close=True,
            )
            return
        ctx.metrics.in_flight.inc()
        try:
            self._run_infer(route, route.model, label, start)
        finally:
            ctx.metrics.in_flight.dec()
            ctx.gate.exit()
            if self._body_length >= LARGE_REQUEST_BYTES:
                release_free_memory()  # the body, its arrays and their copies are free now

    def _run_infer(self, route: Route, model: str, label: str, start: float) -> None:
        ctx = self.context
        try:
            body = self._read_body()
            header_length = parse_header_length(self.headers.get(HEADER_LENGTH_HEADER), len(body))
            decoded = decode_request(body, header_length, limits=ctx.limits)
            request = decoded.request
            if request.id is not None:
                check_request_id(request.id)
            wanted = [out.name for out in request.outputs] if request.outputs else None
            reply = ReplyFormat.of(request)
        except (ProtocolError, HttpRequestError) as exc:
            ctx.metrics.error(label, "too_large" if exc.status == 413 else "bad_request")
            headers = exc.headers if isinstance(exc, HttpRequestError) else None
            self._send_json(exc.status, {"error": str(exc)}, headers=headers)
            return
        try:
            result = ctx.router.infer(
                model,
                decoded.tensors,
                version=route.version,
                outputs=wanted,
                request_id=request.id,
                reply=reply,
            )
        except AgentError as exc:  # counted by the router
            self._send_json(exc.status, {"error": str(exc)})
            return
        if isinstance(result, QueuedResult):
            self._send_queued(result)
            ctx.metrics.model(label).http_seconds.observe(time.perf_counter() - start)
            return
        encoded = encode_answer(
            result.outputs,
            reply=reply,
            batched=result.batched,
            labels=ctx.registry.labels(result.model_name) if reply.classification else (),
            model_name=result.model_name,
            model_version=result.model_version,
            request_id=result.request_id or request.id,
            parameters=result.parameters,
        )
        self._send_encoded(200, encoded)
        ctx.metrics.model(result.model_name).http_seconds.observe(time.perf_counter() - start)

    # -- queued requests --------------------------------------------------------------------

    def _send_queued(self, result: QueuedResult) -> None:
        """202 with the id while the request waits; its answer when it already has one."""
        if result.answered:
            self._send_answered(result.queued)
            return
        self._send_json(
            202,
            pending_body(result.queued, result.model_name),
            headers={"Location": location(result.request_id)},
        )

    def _send_request_state(self, request_id: str) -> None:
        """``GET /v2/requests/{id}``: 202 while pending, 200 with the answer, 404 unknown."""
        queued = self.context.router.lookup(request_id)
        if queued is None:
            self._send_json(
                404,
                {"error": f"no queued request {request_id!r} here (never queued, or expired)"},
            )
            return
        if not queued.answered:
            self._send_json(202, pending_body(queued, queued.reply.model_name))
            return
        self._send_answered(queued)

    def _send_answered(self, queued: QueuedCall) -> None:
        try:
            encoded = queued_answer(queued, self.context.registry.labels)
        except (AgentError, ProtocolError) as exc:  # the cloud's error, a dead letter's, or
            # unrankable output
            self._send_json(
                exc.status, {"error": str(exc), "id": queued.request_id, "state": queued.state}
            )
            return
        self._send_encoded(200, encoded)

    def _send_encoded(self, status: int, encoded: EncodedBody) -> None:
        headers = {}
        if encoded.header_length is not None:
            headers[HEADER_LENGTH_HEADER] = str(encoded.header_length)
        self._send(
            status,
            [encoded.header, *encoded.binary],
            content_type=OCTET_STREAM if encoded.binary else JSON,
            headers=headers,
        )

    def _check_framing(self) -> None:
        """RFC 9112 section 6.3: one message length, stated once (request smuggling hides in
        the alternatives)."""
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1:
            self.close_connection = True
            raise HttpRequestError("more than one Content-Length header", status=400)
        if lengths and "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise HttpRequestError(
                "Content-Length and Transfer-Encoding together; send one of them", status=400
            )
        if lengths:
            self._declared_length()

    def _declared_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        text = raw.strip()
        if not (text.isascii() and text.isdigit()):
            self.close_connection = True
            raise HttpRequestError(f"Content-Length must be an integer, got {raw!r}", status=400)
        return int(text)

    def _too_large(self, length: int) -> PayloadTooLargeError:
        limit = self.context.limits.payload_max_bytes
        return PayloadTooLargeError(f"request body is {length} bytes; the limit is {limit}")

    def _read_body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            raise HttpRequestError(
                "chunked request bodies are not supported; send Content-Length", status=411
            )
        length = self._declared_length()
        if length is None:
            raise HttpRequestError("Content-Length is required", status=411)
        if length > self.context.limits.payload_max_bytes:
            raise self._too_large(length)
        ctx = self.context
        self._body_length = length
        self._reader.deadline = (
            time.monotonic() + ctx.header_timeout_s + length / ctx.body_min_bytes_per_s
        )
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise
        except OSError as exc:  # reset mid-body, or closed to make room
            self.close_connection = True
            raise _ClientGoneError from exc
        self._unread_body = False
        self._waiting(False)
        if len(body) != length:
            self.close_connection = True
            raise HttpRequestError(
                f"the body ended after {len(body)} of the {length} bytes in Content-Length",
                status=400,
            )
        return body

    # -- writing ----------------------------------------------------------------------------

    def _send_json(
        self,
        status: int,
        payload: dict[str, Any],
        *,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self._send(status, [body], content_type=JSON, headers=headers, close=close)

    def _send(
        self,
        status: int,
        parts: Sequence[Buffer],
        *,
        content_type: str,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        if close or self._unread_body:
            self.close_connection = True
            self._linger = self._unread_body
        length = sum(memoryview(part).nbytes for part in parts)
        lines = [
            f"{self.protocol_version} {status} {HTTPStatus(status).phrase}",
            f"Server: {self.server_version}",
            f"Date: {_http_date()}",
            f"Content-Type: {content_type}",
            f"Content-Length: {length}",
        ]
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(b"".join([head, *parts]))
        self.log_request(status)

    def finish(self) -> None:
        super().finish()
        if self._linger:
            self._waiting(True)  # only draining what the client still sends: may make room
            self._discard_unread_body()

    def _discard_unread_body(self) -> None:
        """Read (and drop) what the client still sends after an early answer, for a moment.

        Closing a socket with unread bytes makes the kernel send a reset, which can destroy our
        answer in the client's buffers before it reads it: the 413 would be lost.
        """
        deadline = time.monotonic() + LINGER_S
        left = LINGER_MAX_BYTES
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while left > 0 and (remaining_s := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining_s)
                chunk = self.connection.recv(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            return

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self._peer(), *args)

    def log_error(self, format: str, *args: Any) -> None:
        logger.info("%s " + format, self._peer(), *args)

    def _peer(self) -> str:
        address = self.client_address
        if isinstance(address, tuple) and address:
            return str(address[0])
        return "local"
