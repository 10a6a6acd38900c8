"""The inference endpoint as a plain ASGI layer in front of the FastAPI application.

``POST /v2/models/{m}[/versions/{v}]/infer`` is the hot path: served here it skips FastAPI's
routing, dependency injection and middleware stack, which cost more than the rest of a small
model's request (see benchmarks/RESULTS.md). Every other path goes to the FastAPI app. Access
checks and error bodies are the same as the app's; the body limit wraps both.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from protocols import HEADER_LENGTH_HEADER, ProtocolError

from .access import Access
from .errors import HubError, UnavailableError, error_headers
from .service import InferenceService

__all__ = ["InferencePath"]

logger = logging.getLogger(__name__)

_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_HEADER_LENGTH = HEADER_LENGTH_HEADER.lower().encode()


class InferencePath:
    def __init__(
        self,
        app: ASGIApp,
        *,
        service: InferenceService,
        access: Access,
        ready: Callable[[], bool],
    ) -> None:
        self.app = app
        self.service = service
        self.access = access
        self.ready = ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER.match(scope["path"])
            if match is not None:
                await self._infer(scope, receive, send, match.group(1), match.group(2))
                return
        await self.app(scope, receive, send)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None
    ) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            client = scope.get("client")
            self.access.check(headers, client[0] if client else None, "infer")
            body = await _read_body(receive)
            if not self.ready():
                raise UnavailableError("the hub is not ready")
            encoded = await self.service.infer_http(
                model, version, body, headers.get(HEADER_LENGTH_HEADER.lower())
            )
        except HubError as exc:
            await _send_error(send, exc.status, exc.message, error_headers(exc))
            return
        except ProtocolError as exc:
            await _send_error(send, exc.status, str(exc), [])
            return
        except Exception:
            logger.exception("inference on %s failed", model)
            await _send_error(send, 500, "internal error", [])
            return
        out_headers = [(b"content-length", str(encoded.content_length).encode())]
        if encoded.header_length is None:
            out_headers.append((b"content-type", b"application/json"))
        else:
            out_headers.append((b"content-type", b"application/octet-stream"))
            out_headers.append((_HEADER_LENGTH, str(encoded.header_length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": out_headers})
        await send({"type": "http.response.body", "body": encoded.to_bytes()})


async def _read_body(receive: Receive) -> bytes:
    """The whole body; :class:`BodyLimit` around the app cuts off one over the limit."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise UnavailableError("the client went away")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_error(send: Send, status: int, message: str, extra: list[tuple[str, str]]) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
