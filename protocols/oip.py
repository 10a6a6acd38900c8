"""Pydantic models of the Open Inference Protocol v2 (KServe v2) REST messages.

The models check structure: names, datatypes, shapes, parameters. Tensor ``data`` is kept as
parsed JSON and turned into numpy by :mod:`protocols.codec`, which knows the binary extension
and the limits. Unknown fields are ignored, as the protocol's extensions expect.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from .datatypes import Datatype, parse_datatype
from .errors import ShapeError

__all__ = [
    "ErrorResponse",
    "InferenceRequest",
    "InferenceResponse",
    "LiveResponse",
    "ModelMetadata",
    "ModelReadyResponse",
    "Parameters",
    "ReadyResponse",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadata",
    "TensorMetadata",
]

ParameterValue = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, ParameterValue]
TensorName = Annotated[str, Field(min_length=1, max_length=256)]


def check_shape(value: Any, *, allow_variable: bool = False) -> list[int]:
    """A shape as a list of ints, or :class:`ShapeError` naming the bad dimension."""
    if not isinstance(value, list):
        raise ShapeError(f"shape must be a list of integers, got {type(value).__name__}")
    lowest = -1 if allow_variable else 0
    for i, dim in enumerate(value):
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ShapeError(f"dimension {i} is {dim!r}; dimensions must be integers")
        if dim < lowest:
            rule = ">= 0, or -1 for a variable dimension" if allow_variable else ">= 0"
            raise ShapeError(f"dimension {i} is {dim}; dimensions must be {rule}")
    return value


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=False)


class _Tensor(_Message):
    # Validated natively for speed; protocols.codec turns the failures into DatatypeError and
    # ShapeError, and checks dimensions for sign and limits before anything is allocated.
    name: TensorName
    shape: list[StrictInt]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] | None = None


class RequestInput(_Tensor):
    """One input tensor: JSON ``data``, or ``parameters.binary_data_size`` bytes of the body."""


class RequestOutput(_Message):
    """An output the caller asks for; ``parameters.binary_data`` asks for it in binary."""

    name: TensorName
    parameters: Parameters | None = None


class InferenceRequest(_Message):
    id: StrictStr | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Tensor):
    """One output tensor of a response."""


class InferenceResponse(_Message):
    model_name: StrictStr
    model_version: StrictStr | None = None
    id: StrictStr | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(_Message):
    """An input or output a model declares; ``-1`` marks a variable dimension."""

    name: TensorName
    datatype: Datatype
    shape: list[int]

    @field_validator("datatype", mode="before")
    @classmethod
    def _datatype(cls, value: Any) -> Datatype:
        return parse_datatype(value)

    @field_validator("shape", mode="before")
    @classmethod
    def _shape(cls, value: Any) -> list[int]:
        return check_shape(value, allow_variable=True)


class ServerMetadata(_Message):
    name: StrictStr
    version: StrictStr
    extensions: list[StrictStr] = Field(default_factory=list)


class ModelMetadata(_Message):
    name: StrictStr
    versions: list[StrictStr] | None = None
    platform: StrictStr
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Parameters | None = None


class LiveResponse(_Message):
    live: StrictBool


class ReadyResponse(_Message):
    ready: StrictBool


class ModelReadyResponse(_Message):
    name: StrictStr
    ready: StrictBool


class ErrorResponse(_Message):
    """The body of every failed call: ``{"error": "..."}``."""

    error: StrictStr
