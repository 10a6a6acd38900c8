"""EdgeClient: the small Python client for apps on the device (standard library ``http.client``).

Connections are kept alive and pooled, so one client may be shared by many threads. Tensors
travel in Triton's binary format by default (no JSON number printing). An ``{"error": ...}``
answer raises :class:`ResponseError` with the HTTP status; an unreachable agent raises
:class:`ConnectError`. Inference is stateless, so a request that fails on a kept-alive connection
the agent had already closed is retried once on a fresh one.

    with EdgeClient("127.0.0.1:8081") as client:
        result = client.infer("digits", {"pixels": batch})
        probabilities = result.outputs["output_0"]
        result.served_by  # "edge" or "cloud"

A model whose fallback queues (``on_cloud_unavailable: queue``) may answer 202 while the cloud is
out of reach: ``infer`` then raises :class:`QueuedError` with the request id, and
:meth:`EdgeClient.result` / :meth:`EdgeClient.wait_result` fetch the answer later.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np

from protocols import (
    DEFAULT_LIMITS,
    HEADER_LENGTH_HEADER,
    Limits,
    ModelMetadata,
    ProtocolError,
    ServerMetadata,
    decode_response,
    encode_request,
)

from .addresses import TcpAddress, UnixAddress, parse_address
from .errors import ClientError, ConfigError, ConnectError, QueuedError, ResponseError

__all__ = ["EdgeClient", "InferResult"]

_RETRYABLE = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class InferResult:
    model_name: str
    model_version: str | None
    id: str | None
    outputs: dict[str, np.ndarray[Any, Any]]
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def served_by(self) -> str | None:
        """``"edge"`` or ``"cloud"``."""
        value = self.parameters.get("served_by")
        return None if value is None else str(value)

    @property
    def fallback_reason(self) -> str | None:
        """Why the agent handed the request to the cloud (``None`` when it did not)."""
        value = self.parameters.get("fallback_reason")
        return None if value is None else str(value)

    @property
    def degraded(self) -> bool:
        """Answered on the device although the cloud was wanted (it was out of reach)."""
        return self.parameters.get("degraded") is True


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class EdgeClient:
    """Client of the agent's local API at ``address`` (``host:port`` or ``unix:/path``)."""

    def __init__(
        self,
        address: str = "127.0.0.1:8081",
        *,
        timeout_s: float = 30.0,
        binary: bool = True,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        try:
            self._address: TcpAddress | UnixAddress = parse_address(address)
        except ConfigError as exc:
            raise ConnectError(str(exc)) from None
        self._timeout_s = timeout_s
        self._binary = binary
        self._limits = limits
        self._idle: queue.SimpleQueue[http.client.HTTPConnection] = queue.SimpleQueue()

    # -- inference --------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
        binary: bool | None = None,
    ) -> InferResult:
        """Run ``model`` on named arrays; outputs come back as numpy arrays.

        ``binary`` (default: the client's) sends and asks for tensors in binary; ``outputs``
        names the outputs wanted (all when ``None``). ``request_id`` names the request; for a
        model that queues it is also the idempotency key (the same id is answered once).
        Raises :class:`QueuedError` when the agent queued the request for the cloud (202).
        """
        use_binary = self._binary if binary is None else binary
        body = encode_request(
            inputs,
            id=request_id,
            outputs=outputs,
            binary=use_binary,
            binary_outputs=use_binary,
        )
        headers = {
            "Content-Type": "application/octet-stream" if body.binary else "application/json"
        }
        if body.header_length is not None:
            headers[HEADER_LENGTH_HEADER] = str(body.header_length)
        status, response_headers, payload = self._request(
            "POST", self._model_path(model, version, "/infer"), body.to_bytes(), headers
        )
        if status == 202:
            raise _queued(payload)
        return self._infer_result(status, response_headers, payload)

    def result(self, request_id: str) -> InferResult | None:
        """The answer to a queued request, or ``None`` while it waits for the cloud.

        :class:`ResponseError` 404 when the agent knows no such request (never queued, or its
        answer expired), or with the cloud's error when the cloud refused it.
        """
        status, headers, payload = self._request(
            "GET", f"/v2/requests/{quote(request_id, safe='')}"
        )
        if status == 202:
            return None
        return self._infer_result(status, headers, payload)

    def wait_result(
        self, request_id: str, *, timeout_s: float = 60.0, poll_interval_s: float = 0.1
    ) -> InferResult:
        """Poll :meth:`result` until the answer comes; :class:`ClientError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.result(request_id)
            if answer is not None:
                return answer
            if time.monotonic() >= deadline:
                raise ClientError(f"request {request_id!r} had no answer after {timeout_s:g} s")
            time.sleep(poll_interval_s)

    def _infer_result(
        self, status: int, response_headers: http.client.HTTPMessage, payload: bytes
    ) -> InferResult:
        if status != 200:
            raise _response_error(status, payload)
        try:
            decoded = decode_response(
                payload, _header_length(response_headers), limits=self._limits
            )
        except ProtocolError as exc:
            raise ResponseError(
                f"the agent's answer cannot be decoded: {exc}", status=status
            ) from exc
        response = decoded.response
        return InferResult(
            model_name=response.model_name,
            model_version=response.model_version,
            id=response.id,
            outputs=dict(decoded.tensors),
            parameters=dict(response.parameters or {}),
        )

    # -- health and metadata ----------------------------------------------------------------

    def server_live(self) -> bool:
        return self._get_status("/v2/health/live") == 200

    def server_ready(self) -> bool:
        return self._get_status("/v2/health/ready") == 200

    def model_ready(self, model: str, version: str | None = None) -> bool:
        """``True`` if the model serves; ``False`` if it is loading or failed (404 raises)."""
        status, _, payload = self._request("GET", self._model_path(model, version, "/ready"))
        if status == 404:
            raise _response_error(status, payload)
        return status == 200

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata.model_validate(self._get_json("/v2"))

    def model_metadata(self, model: str, version: str | None = None) -> ModelMetadata:
        return ModelMetadata.model_validate(self._get_json(self._model_path(model, version, "")))

    def status(self) -> dict[str, Any]:
        """The agent's status: device, runtime, and the state of each model."""
        return self._get_json("/status")

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        while True:
            try:
                self._idle.get(block=False).close()
            except queue.Empty:
                return

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _model_path(model: str, version: str | None, tail: str) -> str:
        path = f"/v2/models/{quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{quote(version, safe='')}"
        return path + tail

    def _get_status(self, path: str) -> int:
        return self._request("GET", path)[0]

    def _get_json(self, path: str) -> dict[str, Any]:
        status, _, payload = self._request("GET", path)
        if status != 200:
            raise _response_error(status, payload)
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise ResponseError(f"the agent's answer is not JSON: {exc}", status=status) from exc
        if not isinstance(data, dict):
            raise ResponseError("the agent's answer is not a JSON object", status=status)
        return data

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        try:
            return self._idle.get(block=False), True
        except queue.Empty:
            pass
        if isinstance(self._address, UnixAddress):
            return _UnixConnection(str(self._address.path), self._timeout_s), False
        return (
            http.client.HTTPConnection(
                self._address.host, self._address.port, timeout=self._timeout_s
            ),
            False,
        )

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        for attempt in range(2):
            connection, reused = self._connection()
            try:
                connection.request(method, path, body=body, headers=dict(headers or {}))
                response = connection.getresponse()
                payload = response.read()
            except _RETRYABLE as exc:
                connection.close()
                if reused and attempt == 0:
                    continue  # the agent closed an idle kept-alive connection: try a fresh one
                raise ConnectError(
                    f"connection to the agent at {self._address} broke: {exc}"
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise ConnectError(f"cannot reach the agent at {self._address}: {exc}") from exc
            if response.will_close:
                connection.close()
            else:
                self._idle.put(connection)
            return response.status, response.headers, payload
        raise AssertionError("unreachable")


def _header_length(headers: http.client.HTTPMessage) -> int | None:
    value = headers.get(HEADER_LENGTH_HEADER)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ResponseError(
            f"the agent sent {HEADER_LENGTH_HEADER}: {value!r}, not an integer", status=200
        ) from None


def _queued(payload: bytes) -> QueuedError:
    try:
        data = json.loads(payload)
        request_id = str(data["id"])
    except (ValueError, KeyError, TypeError):
        raise ResponseError("the agent answered 202 without a request id", status=202) from None
    parameters = data.get("parameters") or {}
    reason = parameters.get("fallback_reason") if isinstance(parameters, dict) else None
    return QueuedError(request_id, reason=None if reason is None else str(reason))


def _response_error(status: int, payload: bytes) -> ResponseError:
    try:
        message = json.loads(payload)["error"]
    except (ValueError, KeyError, TypeError):
        message = payload[:200].decode("utf-8", "replace") or "(empty answer)"
    return ResponseError(str(message), status=status)
