"""Requests the agent queued for the cloud: the 202 answer, and the answer fetched later.

The gateway hands over a :class:`QueuedCall` with the cloud's answer already decoded, and the
:class:`~edge_agent.reply.ReplyFormat` its app asked for; here it is only formatted, so
``GET /v2/requests/{id}`` answers in the form the original ``POST .../infer`` would have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from protocols import EncodedBody

from ..cloud.calls import QueuedCall
from ..router import ServedBy
from .answers import encode_answer

__all__ = ["REQUESTS_PATH", "location", "pending_body", "queued_answer"]

REQUESTS_PATH = "/v2/requests/"


def location(request_id: str) -> str:
    """Where the answer to ``request_id`` is fetched: the id percent-encoded (every byte but
    letters, digits and ``-._~``), so that it is one path segment and safe in a header."""
    return REQUESTS_PATH + quote(request_id, safe="")


def _parameters(queued: QueuedCall) -> dict[str, Any]:
    return {
        "served_by": ServedBy.CLOUD.value,
        "fallback_reason": queued.reply.fallback_reason,
        "queued": True,
    }


def pending_body(queued: QueuedCall, model_name: str) -> dict[str, Any]:
    """The JSON of a 202: the id to fetch the answer by, and where."""
    return {
        "id": queued.request_id,
        "model_name": model_name,
        "state": queued.state,
        "attempts": queued.attempts,
        "location": location(queued.request_id),
        "parameters": _parameters(queued),
    }


def queued_answer(queued: QueuedCall, labels: Callable[[str], tuple[str, ...]]) -> EncodedBody:
    """The OIP response for an answered request. Raises the :class:`CloudRequestError` the
    cloud answered it with, if it did."""
    if queued.error is not None:
        raise queued.error
    answer = queued.answer
    assert answer is not None  # answered
    reply = queued.reply
    return encode_answer(
        answer.outputs,
        reply=reply,
        batched=reply.batched,
        labels=labels(reply.model_name),
        model_name=reply.model_name,
        model_version=answer.model_version,
        request_id=queued.request_id,
        parameters=_parameters(queued),
    )
