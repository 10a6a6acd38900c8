"""Requests the agent queued for the cloud: the 202 answer, and the stored answer fetched later.

A queued request keeps, next to it in the outbox, the output format its app asked for (binary or
JSON per output, classification), so ``GET /v2/requests/{id}`` answers in the form the original
``POST .../infer`` would have.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from protocols import (
    BINARY_DATA,
    EncodedBody,
    InferenceRequest,
    encode_response,
    wants_binary_output,
)

from ..cloud.calls import decode_answer
from ..cloud.outbox import RequestState, StoredRequest
from ..router import ServedBy
from .classification import classify

__all__ = ["REQUESTS_PATH", "pending_body", "reply_format", "stored_answer"]

REQUESTS_PATH = "/v2/requests/"
_ALL = "*"


def reply_format(request: InferenceRequest, classes: Mapping[str, int]) -> dict[str, Any]:
    """What to keep with a queued request to answer its app later in the form it asked for."""
    binary: dict[str, bool] = {_ALL: wants_binary_output(request, "\0")}
    for output in request.outputs or ():
        if output.parameters and BINARY_DATA in output.parameters:
            binary[output.name] = output.parameters[BINARY_DATA] is True
    return {"binary": binary, "classification": dict(classes)}


def pending_body(stored: StoredRequest, model_name: str) -> dict[str, Any]:
    """The JSON of a 202: the id to fetch the answer by, and where."""
    return {
        "id": stored.request_id,
        "model_name": model_name,
        "state": RequestState.PENDING.value,
        "attempts": stored.attempts,
        "location": REQUESTS_PATH + stored.request_id,
        "parameters": {
            "served_by": ServedBy.CLOUD.value,
            "fallback_reason": str(stored.reply.get("fallback_reason", "")),
            "queued": True,
        },
    }


def stored_answer(stored: StoredRequest, labels: Callable[[str], tuple[str, ...]]) -> EncodedBody:
    """The OIP response for an answered request. :class:`CloudRequestError` when the cloud
    answered it with an error."""
    reply = stored.reply
    model_name = str(reply.get("model_name", ""))
    assert stored.answer is not None
    decoded = decode_answer(stored.answer, model=model_name)
    outputs = dict(decoded.tensors)
    classes: Mapping[str, int] = reply.get("classification") or {}
    for name, count in classes.items():
        if name in outputs:
            outputs[name] = classify(outputs[name], int(count), labels(model_name))
    binary_prefs: Mapping[str, bool] = reply.get("binary") or {}
    default = bool(binary_prefs.get(_ALL, False))
    parameters: dict[str, Any] = {
        "served_by": ServedBy.CLOUD.value,
        "fallback_reason": str(reply.get("fallback_reason", "")),
        "queued": True,
    }
    return encode_response(
        outputs,
        model_name=model_name,
        model_version=decoded.response.model_version,
        id=stored.request_id,
        parameters=parameters,
        binary={name: bool(binary_prefs.get(name, default)) for name in outputs},
    )
