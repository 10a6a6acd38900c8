"""MQTT payloads: an OIP v2 message as plain JSON, or framed with its binary tensors.

Plain JSON starts with ``{``. The binary form is::

    b"HIB1" | header length N (uint32, little-endian) | N bytes of OIP v2 JSON | tensor bytes

where the JSON's tensors carry ``parameters.binary_data_size`` exactly as over HTTP. A request
is an OIP v2 inference request plus top-level ``model_name`` (and ``model_version``); a response
is an OIP v2 inference response, or ``{"id": ..., "error": ...}``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import Field, StrictInt, StrictStr
from pydantic_core import to_json

from .codec import (
    BinaryChoice,
    Buffer,
    DecodedRequest,
    DecodedResponse,
    EncodedBody,
    as_bytes_view,
    decode_request_parts,
    decode_response_parts,
    encode_request,
    encode_response,
    validate_message,
)
from .errors import BinaryFormatError, MessageError, PayloadTooLargeError, ProtocolError
from .limits import DEFAULT_LIMITS, Limits
from .oip import ErrorResponse, InferenceRequest, Parameters

__all__ = [
    "CONTENT_TYPE_FRAME",
    "CONTENT_TYPE_JSON",
    "FRAME_MAGIC",
    "TRANSIENT_ERROR_STATUSES",
    "MqttErrorResponse",
    "MqttInferenceRequest",
    "content_type_of",
    "decode_mqtt_request",
    "decode_mqtt_response",
    "encode_frame",
    "encode_mqtt_error",
    "encode_mqtt_request",
    "encode_mqtt_response",
    "split_frame",
    "transient_error",
]

FRAME_MAGIC = b"HIB1"
CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_FRAME = "application/vnd.hybrid.hib1"
"""Values for the optional MQTT 5 Content Type property; the first bytes decide regardless."""
_FRAME_HEAD = struct.Struct("<4sI")


class MqttInferenceRequest(InferenceRequest):
    """An OIP v2 request with the model named in the body, as MQTT has no path."""

    model_name: StrictStr = Field(min_length=1, max_length=256)
    model_version: StrictStr | None = None


class MqttErrorResponse(ErrorResponse):
    """``{"id": ..., "error": ..., "status": ...}``: the answer to a request that failed.

    ``status`` is the HTTP status the same failure gets over HTTP (400 for a bad request, 404 for
    an unknown model...), so a gateway can tell the caller's mistakes from the cloud's troubles.
    """

    id: StrictStr | None = None
    status: Annotated[StrictInt, Field(ge=400, le=599)] | None = None
    retry_after_s: Annotated[float, Field(ge=0)] | None = None
    """With 429 and 503: the seconds after which the sender may try again."""


TRANSIENT_ERROR_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Error statuses that may change on retry (overload, a model reloading, a rate limit): such an
answer is never final; the sender tries again within its deadline. Every other error status, and
every model answer, is final."""


def transient_error(payload: Buffer) -> MqttErrorResponse | None:
    """The error reply in ``payload`` when its status is transient, else ``None`` (a model
    answer, a final error, or bytes that are neither). Error replies are always plain JSON."""
    head = bytes(payload[:1])
    if head != b"{" or b'"status"' not in payload:
        return None
    try:
        message = MqttErrorResponse.model_validate_json(bytes(payload))
    except ValueError:
        return None
    if message.status in TRANSIENT_ERROR_STATUSES:
        return message
    return None


def encode_frame(body: EncodedBody) -> bytes:
    """Plain JSON when nothing is binary, else the ``HIB1`` frame."""
    if not body.binary:
        return body.header
    # The 8-byte head keeps the header's alignment padding intact.
    return b"".join((_FRAME_HEAD.pack(FRAME_MAGIC, len(body.header)), body.header, *body.binary))


def content_type_of(payload: Buffer) -> str:
    """The MQTT 5 Content Type that describes ``payload``."""
    return CONTENT_TYPE_FRAME if memoryview(payload)[:4] == FRAME_MAGIC else CONTENT_TYPE_JSON


def split_frame(
    payload: Buffer, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary section of an MQTT payload."""
    view = as_bytes_view(payload)
    size = view.nbytes
    if size > limits.payload_max_bytes:
        raise PayloadTooLargeError(
            f"payload is {size} bytes; the limit is {limits.payload_max_bytes}", location="payload"
        )
    if size == 0:
        raise MessageError("payload is empty", location="payload")
    if view[:4] == FRAME_MAGIC:
        if size < _FRAME_HEAD.size:
            raise BinaryFormatError(
                f"frame is truncated: {size} bytes, the HIB1 head alone is {_FRAME_HEAD.size}",
                location="payload",
            )
        _, length = _FRAME_HEAD.unpack_from(view)
        end = _FRAME_HEAD.size + length
        if end > size:
            raise BinaryFormatError(
                f"header length {length} runs past the end of the {size}-byte frame",
                location="payload",
            )
        if length > limits.header_max_bytes:
            raise PayloadTooLargeError(
                f"JSON header is {length} bytes; the limit is {limits.header_max_bytes}",
                location="header",
            )
        return view[_FRAME_HEAD.size : end], view[end:]
    if bytes(view[:64]).lstrip()[:1] == b"{":
        return view, view[size:]
    raise BinaryFormatError(
        f"payload starts with {bytes(view[:4])!r}; expected '{{' (JSON) or {FRAME_MAGIC!r}",
        location="payload",
    )


def encode_mqtt_request(
    model_name: str,
    inputs: Mapping[str, Any],
    *,
    model_version: str | None = None,
    id: str | None = None,
    parameters: Parameters | None = None,
    outputs: Sequence[str] | None = None,
    binary: BinaryChoice = "auto",
    binary_outputs: bool | None = None,
) -> bytes:
    extra: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        extra["model_version"] = model_version
    body = encode_request(
        inputs,
        id=id,
        parameters=parameters,
        outputs=outputs,
        binary=binary,
        binary_outputs=binary_outputs,
        extra=extra,
    )
    return encode_frame(body)


def decode_mqtt_request(payload: Buffer, *, limits: Limits = DEFAULT_LIMITS) -> DecodedRequest:
    """Decode a request; ``result.request`` is an :class:`MqttInferenceRequest`."""
    header, binary = split_frame(payload, limits=limits)
    return decode_request_parts(header, binary, limits=limits, model=MqttInferenceRequest)


def encode_mqtt_response(
    outputs: Mapping[str, Any],
    *,
    model_name: str,
    model_version: str | None = None,
    id: str | None = None,
    parameters: Parameters | None = None,
    binary: BinaryChoice | Mapping[str, bool] = "auto",
) -> bytes:
    body = encode_response(
        outputs,
        model_name=model_name,
        model_version=model_version,
        id=id,
        parameters=parameters,
        binary=binary,
    )
    return encode_frame(body)


def encode_mqtt_error(
    error: str,
    *,
    id: str | None = None,
    status: int | None = None,
    retry_after_s: float | None = None,
) -> bytes:
    message: dict[str, Any] = {"error": error}
    if id is not None:
        message["id"] = id
    if status is not None:
        message["status"] = status
    if retry_after_s is not None:
        message["retry_after_s"] = round(retry_after_s, 3)
    return to_json(message)


def decode_mqtt_response(
    payload: Buffer, *, limits: Limits = DEFAULT_LIMITS
) -> DecodedResponse | MqttErrorResponse:
    """A decoded response, or the :class:`MqttErrorResponse` the hub sent instead."""
    header, binary = split_frame(payload, limits=limits)
    try:
        return decode_response_parts(header, binary, limits=limits)
    except ProtocolError as exc:
        try:
            return validate_message(MqttErrorResponse, header, limits=limits)
        except ProtocolError:
            raise exc from None
