"""Errors of the edge agent: one root, one subclass per category of failure.

``status`` is the HTTP status the local API answers with, so one handler maps the whole tree onto
``{"error": "..."}``; ``kind`` is the ``error`` label a failed request is counted under in
``edge_agent_request_errors_total``, declared here so the router needs no list of classes. Third-party failures (an interpreter's ``ValueError``, a socket's
``OSError``) are wrapped where they happen, so a caller never sees a bare library traceback for a
known failure; the original stays on ``__cause__``.

    AgentError                       (status 500, kind inference)
     ├── ConfigError                 bad configuration file, environment variable or address
     ├── RuntimeUnavailableError     no TFLite interpreter package can be imported
     ├── ModelLoadError              model file missing, corrupt, or with an unsupported tensor
     ├── ModelNotFoundError          no model (or model version) by that name (404, not_found)
     ├── UnavailableError            the agent is draining or busy (503, unavailable)
     │    ├── ModelNotReadyError     the model is loading, or failed to load: carries the reason
     │    │                          (not_ready)
     │    ├── CloudUnavailableError  the cloud is out of reach: no broker, breaker open, link full
     │    │                          (cloud_unavailable)
     │    └── OutboxFullError        the on-disk outbox holds as many requests as it may
     │                               (outbox_full)
     ├── OutboxConflictError         a queued request's id reused for other inputs (409, conflict)
     ├── InputError                  inputs that do not fit the model: names, datatypes, shapes
     │                               (400, bad_input)
     ├── InferenceError              the interpreter failed while running the model
     ├── CloudTimeoutError           the cloud did not answer within the request's deadline
     │                               (504, cloud_timeout)
     ├── CloudRequestError           the cloud answered ``{"error": ...}`` (502, cloud_error)
     ├── CloudPayloadTooLargeError   a request bound for the cloud is larger, as an MQTT message,
     │                               than ``cloud.payload_max_bytes`` (413, too_large)
     ├── CloudLinkError              the cloud link failed this one request: it could not be
     │                               sent, or it kept failing in the outbox (500, cloud_link)
     ├── HttpRequestError            an HTTP request the local API cannot route or read (404, 405, 411)
     └── ClientError                 raised by :class:`edge_agent.client.EdgeClient`
          ├── ResponseError          the agent answered ``{"error": ...}``; carries the status
          ├── QueuedError            the agent queued the request (202); fetch the answer by its id
          └── ConnectError           the agent could not be reached, or broke the connection
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AgentError",
    "ClientError",
    "CloudLinkError",
    "CloudPayloadTooLargeError",
    "CloudRequestError",
    "CloudTimeoutError",
    "CloudUnavailableError",
    "ConfigError",
    "ConnectError",
    "HttpRequestError",
    "InferenceError",
    "InputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "OutboxConflictError",
    "OutboxFullError",
    "QueuedError",
    "ResponseError",
    "RuntimeUnavailableError",
    "UnavailableError",
]


class AgentError(Exception):
    """Root of every error the edge agent raises. ``str(err)`` is safe to show a caller."""

    status: int = 500
    kind: ClassVar[str] = "inference"
    """The ``error`` label of ``edge_agent_request_errors_total`` for a request that fails so."""


class ConfigError(AgentError):
    """The configuration file, an ``HYBRID_AGENT_*`` variable or an address is invalid."""


class RuntimeUnavailableError(AgentError):
    """None of the TFLite interpreter packages (or not the one asked for) can be imported."""


class ModelLoadError(AgentError):
    """A model could not be loaded: missing or corrupt file, unsupported tensor, failed warm-up."""


class ModelNotFoundError(AgentError):
    """No model by that name, or the model does not serve the version asked for."""

    status = 404
    kind = "not_found"


class UnavailableError(AgentError):
    """The agent cannot take the request now (draining, or every worker busy); retry later."""

    status = 503
    kind = "unavailable"


class ModelNotReadyError(UnavailableError):
    """The model is configured but not serving: still loading, or its load failed."""

    kind = "not_ready"


class CloudUnavailableError(UnavailableError):
    """The cloud cannot take the request now: not connected to the broker, the circuit breaker is
    open, or the link already has as many requests in flight as it may."""

    kind = "cloud_unavailable"


class OutboxFullError(UnavailableError):
    """The on-disk outbox is full; the request was not queued."""

    kind = "outbox_full"


class OutboxConflictError(AgentError):
    """A request for a model that queues reuses the id of a queued request (pending, or answered
    and not yet expired) with other inputs; the id is that request's idempotency key, so this one
    is refused rather than given the other's answer."""

    status = 409
    kind = "conflict"


class CloudTimeoutError(AgentError):
    """The cloud did not answer within the request's deadline (retries included)."""

    status = 504
    kind = "cloud_timeout"


class CloudPayloadTooLargeError(AgentError):
    """A request that must go to the cloud is larger, as an MQTT message, than the cloud takes
    (``cloud.payload_max_bytes``); refused whatever ``on_cloud_unavailable`` says, as retrying or
    queueing cannot make it fit."""

    status = 413
    kind = "too_large"


class CloudLinkError(AgentError):
    """The cloud link failed this request alone (it could not be published, or a callback of
    the link failed on it); other requests and the link go on. Logged with the request's id."""

    status = 500
    kind = "cloud_link"


class CloudRequestError(AgentError):
    """The cloud answered the request with an error (for example, it has no such model).

    502 unless the cloud said the request itself was at fault (400, 404 or 413), which the app
    is then told as it is: the same request would fail the same way at the edge's own API.
    """

    status = 502
    kind = "cloud_error"
    PASSED_THROUGH = frozenset({400, 404, 413})

    def __init__(self, message: str, *, cloud_status: int | None = None) -> None:
        super().__init__(message)
        self.cloud_status = cloud_status
        if cloud_status in self.PASSED_THROUGH:
            self.status = cloud_status


class InputError(AgentError):
    """Inputs that do not fit the model: unknown or missing names, datatype, shape."""

    status = 400
    kind = "bad_input"


class InferenceError(AgentError):
    """The interpreter failed while running a model on valid inputs."""


class HttpRequestError(AgentError):
    """An HTTP request the local API cannot take: no such path, wrong method, no length."""

    def __init__(self, message: str, *, status: int, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        super().__init__(message)


class ClientError(AgentError):
    """Raised by :class:`~edge_agent.client.EdgeClient`."""


class ResponseError(ClientError):
    """The agent answered with ``{"error": ...}``; ``status`` is the HTTP status it sent."""

    def __init__(self, message: str, *, status: int) -> None:
        self.message = message
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


class QueuedError(ClientError):
    """The agent could not reach the cloud and keeps the request in its outbox (HTTP 202).

    The answer is fetched later with :meth:`EdgeClient.result` or :meth:`EdgeClient.wait_result`
    by ``request_id``.
    """

    status = 202

    def __init__(self, request_id: str, *, reason: str | None = None) -> None:
        self.request_id = request_id
        self.reason = reason
        super().__init__(f"request {request_id!r} is queued until the cloud can be reached")


class ConnectError(ClientError):
    """The agent could not be reached, or the connection broke before a full answer came."""
