"""A cloud request and its result as the router sees them, and decoding the hub's answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocols import DecodedResponse, ProtocolError, decode_mqtt_response

from ..errors import CloudRequestError
from ..runtime import Array

__all__ = ["CloudCall", "CloudResult", "decode_answer"]


@dataclass(frozen=True, kw_only=True, slots=True)
class CloudCall:
    request_id: str
    model: str
    """The hub's model name."""
    version: str | None
    inputs: Mapping[str, Array]
    outputs: Sequence[str] | None
    deadline_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class CloudResult:
    model_name: str
    model_version: str | None
    outputs: dict[str, Array]
    parameters: dict[str, Any]
    round_trip_s: float


def decode_answer(payload: bytes, *, model: str) -> DecodedResponse:
    """The hub's answer decoded; :class:`CloudRequestError` for an error answer or bad bytes."""
    try:
        decoded = decode_mqtt_response(payload)
    except ProtocolError as exc:
        raise CloudRequestError(
            f"the cloud's answer for {model!r} cannot be decoded: {exc}"
        ) from exc
    if isinstance(decoded, DecodedResponse):
        return decoded
    raise CloudRequestError(
        f"the cloud answered for {model!r}: {decoded.error}", cloud_status=decoded.status
    )
