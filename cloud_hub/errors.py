"""Errors of the cloud hub. Each carries the HTTP status it is answered with.

    HubError                       (status 500)
     ├── ConfigError               bad settings or model config.yaml (at start or load)
     ├── BadRequestError           400: a request the model cannot take (names, shapes, dtypes)
     ├── AuthenticationError       401: no or wrong credentials
     ├── PermissionDeniedError     403: credentials without the needed scope, or a remote
     │                             client while the hub serves loopback only
     ├── NotFoundError             404
     │    ├── ModelNotFoundError   404: unknown model or version
     │    │    └── ModelNotLoadedError  404: a model of the repository serving no version now
     │    ├── ArtifactNotFoundError  404: no such artifact file in the store
     │    ├── CaptureNotFoundError   404: no captured model or shard
     │    └── JobNotFoundError     404: no such conversion job
     ├── ConflictError             409: a release or upload that clashes with what is there
     ├── PayloadTooLargeError      413: body over the limit
     ├── UnsupportedMediaTypeError  415: an upload of a kind the converter does not take
     ├── RateLimitedError          429: per-key rate limit; ``retry_after_s``
     ├── UnavailableError          503: not ready, draining, or a model being unloaded
     │    ├── QueueFullError       503: the model's batching queue is full
     │    ├── RequestTimeoutError  503: the request's deadline passed before it ran
     │    └── StoreError       503: the shared store (folder or bucket) failed or is out of reach
     ├── ModelLoadError            a model file that cannot be loaded (the old version keeps serving)
     │    └── BackendUnavailableError  the backend's runtime or hardware is missing (TensorRT, GPU)
     ├── InferenceError            500: the backend failed on a valid request
     └── StoreObjectMissingError   404: no such object in the shared store

Wire-format errors are :class:`protocols.ProtocolError` and keep their own status (400 or 413).
"""

from __future__ import annotations

import math

__all__ = [
    "ArtifactNotFoundError",
    "AuthenticationError",
    "BackendUnavailableError",
    "BadRequestError",
    "CaptureNotFoundError",
    "ConfigError",
    "ConflictError",
    "HubError",
    "InferenceError",
    "JobNotFoundError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotLoadedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QueueFullError",
    "RateLimitedError",
    "RequestTimeoutError",
    "StoreError",
    "StoreObjectMissingError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "error_headers",
]


class HubError(Exception):
    status: int = 500

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class ConfigError(HubError):
    pass


class BadRequestError(HubError):
    status = 400


class AuthenticationError(HubError):
    status = 401


class PermissionDeniedError(HubError):
    status = 403


class NotFoundError(HubError):
    status = 404


class ModelNotFoundError(NotFoundError):
    pass


class ModelNotLoadedError(ModelNotFoundError):
    pass


class CaptureNotFoundError(NotFoundError):
    pass


class ArtifactNotFoundError(NotFoundError):
    pass


class JobNotFoundError(NotFoundError):
    pass


class ConflictError(HubError):
    status = 409


class PayloadTooLargeError(HubError):
    status = 413


class UnsupportedMediaTypeError(HubError):
    status = 415


class RateLimitedError(HubError):
    status = 429

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnavailableError(HubError):
    status = 503


class QueueFullError(UnavailableError):
    pass


class RequestTimeoutError(UnavailableError):
    pass


class StoreError(UnavailableError):
    pass


class StoreObjectMissingError(HubError):
    status = 404


class ModelLoadError(HubError):
    pass


class BackendUnavailableError(ModelLoadError):
    pass


class InferenceError(HubError):
    pass


def error_headers(exc: HubError) -> list[tuple[str, str]]:
    """Headers an error response carries: ``Retry-After`` for 429, ``WWW-Authenticate`` for 401."""
    if isinstance(exc, RateLimitedError):
        return [("Retry-After", str(max(1, math.ceil(exc.retry_after_s))))]
    if exc.status == 401:
        return [("WWW-Authenticate", "Bearer")]
    if exc.status == 413:
        return [("Connection", "close")]
    return []
