"""The request body limit, for every route: 413 before a byte of an oversized body is read.

A body whose Content-Length is over the limit is refused at once; one that streams in without it
is cut off when it passes the limit (the app sees :class:`PayloadTooLargeError` from
``receive``, answered as 413 like any other hub error).
"""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLargeError
from .metrics import HubMetrics

__all__ = ["BodyLimit"]


class BodyLimit:
    """Refuses bodies over the limit with 413 before reading them: by Content-Length when
    given, else while they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: HubMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            self.metrics.rejected.labels(reason="body_too_large").inc()
            response = JSONResponse(
                {"error": f"request body is {int(declared)} bytes; the limit is {self.max_bytes}"},
                status_code=413,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    self.metrics.rejected.labels(reason="body_too_large").inc()
                    await _discard_rest(receive, message)
                    raise PayloadTooLargeError(
                        f"request body is over the limit of {self.max_bytes} bytes"
                    )
            return message

        await self.app(scope, limited, send)


async def _discard_rest(
    receive: Receive, message: Message, *, max_bytes: int = 64 << 20, max_s: float = 2.0
) -> None:
    """Read and drop what the client is still sending, for a while, before answering 413.

    Closing a socket with unread data makes the kernel reset the connection, and the reset can
    reach the client before the 413 does; a client that is still uploading would never see why.
    """
    deadline = time.monotonic() + max_s
    dropped = 0
    while message.get("more_body", False) and dropped < max_bytes and time.monotonic() < deadline:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
