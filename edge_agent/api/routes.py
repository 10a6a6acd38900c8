"""The local API's paths: the Open Inference Protocol v2 subset the agent serves, plus ``/status``
and ``/v2/requests/{id}`` (the answer to a request the agent queued for the cloud)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from protocols import ProtocolError, check_request_id

from ..errors import HttpRequestError

__all__ = ["Endpoint", "Route", "match_route"]


class Endpoint(enum.Enum):
    LIVE = "live"
    READY = "ready"
    SERVER_METADATA = "server_metadata"
    MODEL_METADATA = "model_metadata"
    MODEL_READY = "model_ready"
    INFER = "infer"
    STATUS = "status"
    REQUEST = "request"


@dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    endpoint: Endpoint
    model: str | None = None
    version: str | None = None
    request_id: str | None = None


_FIXED = {
    "/v2/health/live": Endpoint.LIVE,
    "/v2/health/ready": Endpoint.READY,
    "/v2": Endpoint.SERVER_METADATA,
    "/status": Endpoint.STATUS,
}
_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?$")
_TAILS = {None: Endpoint.MODEL_METADATA, "/ready": Endpoint.MODEL_READY, "/infer": Endpoint.INFER}
_REQUEST = re.compile(r"^/v2/requests/([^/]+)$")


def match_route(method: str, target: str) -> Route:
    """The route for ``method`` and the request target; :class:`HttpRequestError` 400 (a target
    that is not a URL, or a request id no request may have), 404 or 405."""
    try:
        path = urlsplit(target).path.rstrip("/") or "/"
    except ValueError as exc:  # "http://[::1": an unclosed IPv6 host, and the like
        raise HttpRequestError(
            f"the request target is not a valid URL: {exc}", status=400
        ) from None
    endpoint = _FIXED.get(path)
    route: Route | None = None
    if endpoint is not None:
        route = Route(endpoint=endpoint)
    elif (found_request := _REQUEST.match(path)) is not None:
        request_id = unquote(found_request.group(1))
        try:
            check_request_id(request_id)
        except ProtocolError as exc:
            raise HttpRequestError(str(exc), status=400) from None
        route = Route(endpoint=Endpoint.REQUEST, request_id=request_id)
    else:
        found = _MODEL.match(path)
        if found is not None:
            model, version, tail = found.groups()
            route = Route(
                endpoint=_TAILS[tail],
                model=unquote(model),
                version=unquote(version) if version is not None else None,
            )
    if route is None:
        raise HttpRequestError(f"no such endpoint: {method} {path}", status=404)
    allowed = "POST" if route.endpoint is Endpoint.INFER else "GET"
    if method != allowed:
        raise HttpRequestError(
            f"{method} is not allowed on {path}; use {allowed}",
            status=405,
            headers={"Allow": allowed},
        )
    return route
