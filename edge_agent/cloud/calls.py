"""What the router and the local API see of the cloud: a request, its answer decoded, and a
request kept in the outbox. The gateway decodes the hub's bytes into these, so nothing above it
touches the MQTT codec or the outbox's rows."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocols import DecodedResponse, ProtocolError, decode_mqtt_response

from ..errors import CloudLinkError, CloudRequestError
from ..reply import ReplyFormat
from ..runtime import Array

__all__ = ["CloudCall", "CloudResult", "QueuedCall", "call_digest", "decode_answer"]


@dataclass(frozen=True, kw_only=True, slots=True)
class CloudCall:
    request_id: str
    model: str
    """The hub's model name."""
    version: str | None
    inputs: Mapping[str, Array]
    outputs: Sequence[str] | None
    deadline_s: float
    parameters: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    """Request parameters: what the device reports of a fallback (docs/protocol.md, 2.5)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CloudResult:
    """The hub's answer, decoded."""

    model_name: str
    """The hub's model name."""
    model_version: str | None
    outputs: dict[str, Array]
    parameters: dict[str, Any]
    round_trip_s: float | None = None
    """``None`` for an answer read back from the outbox."""


@dataclass(frozen=True, kw_only=True, slots=True)
class QueuedCall:
    """A request kept in the outbox until the cloud answers it, and its answer once it has one:
    the decoded result, or the error the cloud answered with."""

    request_id: str
    reply: ReplyFormat
    """How to answer the app, as the local API and the router left it."""
    attempts: int
    """Deliveries tried so far."""
    answer: CloudResult | None = None
    error: CloudRequestError | CloudLinkError | None = None
    """The cloud's error answer, or (a dead letter) why the link gave up on it."""
    dead: bool = False
    """The link failed it ``outbox.max_failures`` times; it is not sent again."""

    @property
    def answered(self) -> bool:
        """It has its final state: an answer, the cloud's error, or a dead letter's."""
        return self.answer is not None or self.error is not None

    @property
    def state(self) -> str:
        """``pending``, ``answered`` or ``dead``, as the local API reports it."""
        if self.dead:
            return "dead"
        return "answered" if self.answered else "pending"


def call_digest(call: CloudCall) -> str:
    """What the app asked for (model, version, inputs, outputs), as a digest: the outbox tells a
    repeat of a queued request (same id, same digest) from a reused id (another digest)."""
    digest = hashlib.sha256()
    digest.update(f"{call.model}\0{call.version}\0{list(call.outputs or [])}\0".encode())
    for name in sorted(call.inputs):
        array = call.inputs[name]
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def decode_answer(payload: bytes, *, model: str, round_trip_s: float | None = None) -> CloudResult:
    """The hub's answer decoded; :class:`CloudRequestError` for an error answer or bad bytes.
    ``model`` names the model in those errors."""
    try:
        decoded = decode_mqtt_response(payload)
    except ProtocolError as exc:
        raise CloudRequestError(
            f"the cloud's answer for {model!r} cannot be decoded: {exc}"
        ) from exc
    if not isinstance(decoded, DecodedResponse):
        raise CloudRequestError(
            f"the cloud answered for {model!r}: {decoded.error}", cloud_status=decoded.status
        )
    response = decoded.response
    return CloudResult(
        model_name=response.model_name,
        model_version=response.model_version,
        outputs=dict(decoded.tensors),
        parameters=dict(response.parameters or {}),
        round_trip_s=round_trip_s,
    )
