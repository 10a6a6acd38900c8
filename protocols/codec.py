"""Tensors to and from the wire: OIP v2 JSON and Triton's binary tensor data extension.

A message is a JSON header, optionally followed by a binary section holding the raw bytes of
the tensors whose ``parameters.binary_data_size`` is set, in the order they appear. Over HTTP the
length of the JSON part travels in the ``Inference-Header-Content-Length`` header; over MQTT in
the ``HIB1`` frame (:mod:`protocols.envelope`). Fixed-size types are little-endian and row-major;
BYTES elements are each prefixed with their length as a 4-byte little-endian integer.

In JSON, BYTES elements are strings; elements that are not UTF-8 travel base64-encoded, with
``parameters.content_type`` set to ``"base64"`` on the tensor.

Decoded arrays from the binary section are read-only views of the message, without a copy
where the data is aligned (encoders here pad the JSON header with spaces so that it is). Every
decoder checks :class:`~protocols.limits.Limits` before it allocates.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from .datatypes import Datatype, datatype_of, parse_datatype
from .errors import (
    BinaryFormatError,
    DataError,
    DatatypeError,
    LimitExceededError,
    MessageError,
    PayloadTooLargeError,
    ProtocolError,
    ShapeError,
    ValueOverflowError,
)
from .limits import DEFAULT_LIMITS, Limits
from .oip import InferenceRequest, InferenceResponse, Parameters, RequestInput, ResponseOutput

__all__ = [
    "AUTO_BINARY_MIN_ELEMENTS",
    "BINARY_DATA",
    "BINARY_DATA_OUTPUT",
    "BINARY_DATA_SIZE",
    "HEADER_LENGTH_HEADER",
    "BinaryChoice",
    "DecodedRequest",
    "DecodedResponse",
    "EncodedBody",
    "decode_binary_tensor",
    "decode_request",
    "decode_response",
    "deserialize_bytes_tensor",
    "encode_binary_tensor",
    "encode_request",
    "encode_response",
    "parse_header_length",
    "serialize_bytes_tensor",
    "validate_message",
    "wants_binary_output",
]

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
CONTENT_TYPE = "content_type"
BASE64 = "base64"

AUTO_BINARY_MIN_ELEMENTS = 64
"""With ``binary="auto"``, tensors this large travel binary, as do FP16 and BF16 always."""

BinaryChoice = bool | Literal["auto"]

_M = TypeVar("_M", bound=BaseModel)
_LENGTH = struct.Struct("<I")
_EXACT_FLOAT_INT = 2**53
_ALIGN = 8
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, kw_only=True, slots=True)
class EncodedBody:
    """An encoded message: its JSON header and the tensor bytes that follow it."""

    header: bytes
    binary: tuple[Buffer, ...] = ()

    @property
    def header_length(self) -> int | None:
        """Value for ``Inference-Header-Content-Length``; ``None`` when the body is plain JSON."""
        return len(self.header) if self.binary else None

    @property
    def content_length(self) -> int:
        return len(self.header) + sum(memoryview(b).nbytes for b in self.binary)

    def to_bytes(self) -> bytes:
        """The whole HTTP body: header then binary section (one copy)."""
        return b"".join((self.header, *self.binary)) if self.binary else self.header


@dataclass(frozen=True, kw_only=True, slots=True)
class DecodedRequest:
    request: InferenceRequest
    tensors: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    """Input arrays by name, in request order."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DecodedResponse:
    response: InferenceResponse
    tensors: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    """Output arrays by name, in response order."""


# ---------------------------------------------------------------------------------------------
# Public API


def encode_request(
    inputs: Mapping[str, Any],
    *,
    id: str | None = None,
    parameters: Parameters | None = None,
    outputs: Sequence[str] | None = None,
    binary: BinaryChoice = "auto",
    binary_outputs: bool | None = None,
    extra: Mapping[str, Any] | None = None,
) -> EncodedBody:
    """Encode an inference request from named arrays (anything ``numpy.asarray`` takes).

    ``outputs`` names the outputs wanted (all when ``None``); ``binary_outputs`` asks the server
    to answer them in binary. ``extra`` adds top-level fields (MQTT's ``model_name``).
    """
    header: dict[str, Any] = dict(extra or {})
    if id is not None:
        header["id"] = id
    params = dict(parameters or {})
    if binary_outputs is not None and not outputs:
        params[BINARY_DATA_OUTPUT] = binary_outputs
    if params:
        header["parameters"] = params
    if outputs is not None:
        wanted: list[dict[str, Any]] = []
        for name in outputs:
            entry: dict[str, Any] = {"name": name}
            if binary_outputs is not None:
                entry["parameters"] = {BINARY_DATA: binary_outputs}
            wanted.append(entry)
        header["outputs"] = wanted
    return _encode(header, "inputs", inputs, lambda _name: binary)


def decode_request(
    body: Buffer, header_length: int | str | None = None, *, limits: Limits = DEFAULT_LIMITS
) -> DecodedRequest:
    """Decode an HTTP inference request body; ``header_length`` as the HTTP header gives it."""
    return decode_request_parts(*split_body(body, header_length, limits=limits), limits=limits)


def decode_request_parts(
    header: Buffer,
    binary: memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
    model: type[InferenceRequest] = InferenceRequest,
) -> DecodedRequest:
    """Decode a request already split into its JSON header and binary section."""
    _check_header_size(header, limits)
    request = _validate(model, header)
    tensors = _decode_tensors(request.inputs, binary, "inputs", limits)
    return DecodedRequest(request=request, tensors=tensors)


def encode_response(
    outputs: Mapping[str, Any],
    *,
    model_name: str,
    model_version: str | None = None,
    id: str | None = None,
    parameters: Parameters | None = None,
    binary: BinaryChoice | Mapping[str, bool] = False,
) -> EncodedBody:
    """Encode an inference response. ``binary`` may choose per output name."""
    header: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        header["model_version"] = model_version
    if id is not None:
        header["id"] = id
    if parameters:
        header["parameters"] = dict(parameters)
    if isinstance(binary, Mapping):
        choices = binary
        return _encode(header, "outputs", outputs, lambda name: choices.get(name, False))
    return _encode(header, "outputs", outputs, lambda _name: binary)


def decode_response(
    body: Buffer, header_length: int | str | None = None, *, limits: Limits = DEFAULT_LIMITS
) -> DecodedResponse:
    """Decode an HTTP inference response body."""
    return decode_response_parts(*split_body(body, header_length, limits=limits), limits=limits)


def decode_response_parts(
    header: Buffer, binary: memoryview, *, limits: Limits = DEFAULT_LIMITS
) -> DecodedResponse:
    _check_header_size(header, limits)
    response = _validate(InferenceResponse, header)
    tensors = _decode_tensors(response.outputs, binary, "outputs", limits)
    return DecodedResponse(response=response, tensors=tensors)


def wants_binary_output(request: InferenceRequest, name: str) -> bool:
    """Whether the caller asked for output ``name`` in binary (Triton's rules).

    A per-output ``parameters.binary_data`` wins; else the request's
    ``parameters.binary_data_output``; else JSON.
    """
    for out in request.outputs or ():
        if out.name == name and out.parameters and BINARY_DATA in out.parameters:
            return out.parameters[BINARY_DATA] is True
    if request.parameters and BINARY_DATA_OUTPUT in request.parameters:
        return request.parameters[BINARY_DATA_OUTPUT] is True
    return False


def parse_header_length(value: str | int | None, body_length: int) -> int | None:
    """Check an ``Inference-Header-Content-Length`` value against the body it describes."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):  # "²".isdigit() is true; int("²") fails
            raise BinaryFormatError(
                f"{HEADER_LENGTH_HEADER} must be a non-negative integer, got {value!r}",
                location=HEADER_LENGTH_HEADER,
            )
        value = int(text)
    if value < 0:
        raise BinaryFormatError(
            f"{HEADER_LENGTH_HEADER} must be a non-negative integer, got {value}",
            location=HEADER_LENGTH_HEADER,
        )
    if value > body_length:
        raise BinaryFormatError(
            f"{HEADER_LENGTH_HEADER} is {value} but the body has only {body_length} bytes",
            location=HEADER_LENGTH_HEADER,
        )
    return value


def split_body(
    body: Buffer, header_length: int | str | None, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[memoryview, memoryview]:
    """Split a body into its JSON header and binary section, checking the size limits."""
    view = as_bytes_view(body)
    if view.nbytes > limits.payload_max_bytes:
        raise PayloadTooLargeError(
            f"body is {view.nbytes} bytes; the limit is {limits.payload_max_bytes}"
        )
    length = parse_header_length(header_length, view.nbytes)
    if length is None:
        length = view.nbytes
    if length > limits.header_max_bytes:
        raise PayloadTooLargeError(
            f"JSON header is {length} bytes; the limit is {limits.header_max_bytes}",
            location="header",
        )
    return view[:length], view[length:]


def as_bytes_view(data: Buffer) -> memoryview:
    """A flat unsigned-byte view of ``data`` (no copy)."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def validate_message(model: type[_M], raw: Buffer, *, limits: Limits = DEFAULT_LIMITS) -> _M:
    """Parse and validate a JSON message, mapping pydantic's errors onto :class:`ProtocolError`."""
    _check_header_size(raw, limits)
    return _validate(model, raw)


def _check_header_size(raw: Buffer, limits: Limits) -> None:
    size = len(raw)  # bytes, or a memoryview of unsigned bytes
    if size > limits.header_max_bytes:
        raise PayloadTooLargeError(
            f"JSON header is {size} bytes; the limit is {limits.header_max_bytes}",
            location="header",
        )


def _validate(model: type[_M], raw: Buffer) -> _M:
    try:
        return model.model_validate_json(bytes(raw) if isinstance(raw, memoryview) else raw)
    except ValidationError as exc:
        raise _protocol_error(exc) from None


def decode_binary_tensor(
    raw: Buffer,
    datatype: Datatype,
    shape: Sequence[int],
    *,
    limits: Limits = DEFAULT_LIMITS,
    location: str | None = None,
) -> np.ndarray[Any, Any]:
    """One tensor from its raw little-endian bytes (BYTES: length-prefixed elements), as the
    binary extension and gRPC's ``raw_input_contents`` carry it; a read-only view where aligned."""
    try:
        count = _check_shape_limits(shape, limits)
        return _from_binary(as_bytes_view(raw), datatype, list(shape), count, limits)
    except ProtocolError as exc:
        if location is None:
            raise
        raise type(exc)(exc.message, location=location) from None


def encode_binary_tensor(array: np.ndarray[Any, Any], datatype: Datatype) -> Buffer:
    """The raw bytes of one tensor, as :func:`decode_binary_tensor` reads them."""
    return _to_binary(array, datatype)


def serialize_bytes_tensor(array: np.ndarray[Any, Any]) -> bytes:
    """BYTES elements in row-major order, each prefixed by its 4-byte little-endian length."""
    parts: list[bytes] = []
    for element in array.reshape(-1):
        raw = _as_bytes(element)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes_tensor(
    raw: Buffer, count: int, *, limits: Limits = DEFAULT_LIMITS, location: str | None = None
) -> np.ndarray[Any, Any]:
    """Read exactly ``count`` length-prefixed BYTES elements from ``raw`` (object array of bytes)."""
    view = memoryview(raw).cast("B")
    out = np.empty(count, dtype=object)
    offset = 0
    end = view.nbytes
    for i in range(count):
        if offset + 4 > end:
            raise BinaryFormatError(
                f"BYTES data ends inside the length prefix of element {i} "
                f"({end - offset} of 4 bytes left)",
                location=location,
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if length > limits.bytes_element_max_bytes:
            raise LimitExceededError(
                f"BYTES element {i} is {length} bytes; the limit is "
                f"{limits.bytes_element_max_bytes}",
                location=location,
            )
        if offset + length > end:
            raise BinaryFormatError(
                f"BYTES element {i} declares {length} bytes but only {end - offset} remain",
                location=location,
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != end:
        raise ShapeError(
            f"BYTES data holds more than the {count} elements the shape declares "
            f"({end - offset} bytes left over)",
            location=location,
        )
    return out


# ---------------------------------------------------------------------------------------------
# Encoding


def _encode(
    header: dict[str, Any],
    key: str,
    arrays: Mapping[str, Any],
    binary_for: Any,
) -> EncodedBody:
    entries: list[dict[str, Any]] = []
    chunks: list[Buffer] = []
    for name, value in arrays.items():
        array = np.asarray(value)
        try:
            datatype = datatype_of(array.dtype)
        except DatatypeError as exc:
            raise DatatypeError(exc.message, location=f"{key} {name!r}") from None
        choice = binary_for(name)
        if choice == "auto":
            choice = datatype in (Datatype.FP16, Datatype.BF16) or (
                array.size >= AUTO_BINARY_MIN_ELEMENTS
            )
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype,  # a str enum: JSON writes its value
        }
        if choice:
            raw = _to_binary(array, datatype)
            entry["parameters"] = {BINARY_DATA_SIZE: len(raw)}
            chunks.append(raw)
        else:
            data, params = _to_json_data(array, datatype)
            if params:
                entry["parameters"] = params
            entry["data"] = data
        entries.append(entry)
    header[key] = entries
    raw = to_json(header, inf_nan_mode="constants")
    if chunks:
        # Trailing spaces (valid JSON) align the binary section to 8 bytes, so decoders can
        # view it in place instead of copying it.
        raw += b" " * (-len(raw) % _ALIGN)
    return EncodedBody(header=raw, binary=tuple(chunks))


def _to_binary(array: np.ndarray[Any, Any], datatype: Datatype) -> Buffer:
    if datatype is Datatype.BYTES:
        return serialize_bytes_tensor(array)
    contiguous = np.ascontiguousarray(array, dtype=datatype.numpy_dtype)
    return contiguous.reshape(-1).view(np.uint8).data if contiguous.size else b""


def _to_json_data(array: np.ndarray[Any, Any], datatype: Datatype) -> tuple[list[Any], Parameters]:
    flat = array.reshape(-1)
    if datatype is Datatype.BYTES:
        elements = [_as_bytes(e) for e in flat]
        try:
            return [e.decode("utf-8") for e in elements], {}
        except UnicodeDecodeError:
            return [base64.b64encode(e).decode("ascii") for e in elements], {CONTENT_TYPE: BASE64}
    if datatype is Datatype.BF16:
        flat = flat.astype(np.float32)
    data: list[Any] = flat.tolist()
    return data, {}


def _as_bytes(element: Any) -> bytes:
    if isinstance(element, bytes):
        return element
    if isinstance(element, str):
        return element.encode("utf-8")
    if isinstance(element, (bytearray, memoryview, np.bytes_)):
        return bytes(element)
    raise DataError(f"BYTES elements must be bytes or str, got {type(element).__name__}")


# ---------------------------------------------------------------------------------------------
# Decoding


def _decode_tensors(
    tensors: Sequence[RequestInput | ResponseOutput],
    binary: memoryview,
    key: str,
    limits: Limits,
) -> dict[str, np.ndarray[Any, Any]]:
    if len(tensors) > limits.tensors_max:
        raise LimitExceededError(
            f"{len(tensors)} tensors; the limit is {limits.tensors_max}", location=key
        )
    out: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for index, tensor in enumerate(tensors):
        try:
            if tensor.name in out:
                raise MessageError(f"tensor name {tensor.name!r} appears twice")
            out[tensor.name], offset = _decode_tensor(tensor, binary, offset, limits)
        except ProtocolError as exc:
            # Locations are added here, on the way out, to keep the good path cheap.
            raise type(exc)(exc.message, location=f"{key}[{index}] {tensor.name!r}") from None
    if offset != binary.nbytes:
        raise BinaryFormatError(
            f"{binary.nbytes - offset} bytes of binary data follow the last tensor",
            location="binary section",
        )
    return out


def _decode_tensor(
    tensor: RequestInput | ResponseOutput, binary: memoryview, offset: int, limits: Limits
) -> tuple[np.ndarray[Any, Any], int]:
    """One tensor's array, and the offset of the next tensor's binary data."""
    count = _check_shape_limits(tensor.shape, limits)
    params = tensor.parameters or {}
    if "shared_memory_region" in params:
        raise MessageError("shared-memory tensors are not supported")
    size = params.get(BINARY_DATA_SIZE)
    if size is None:
        if tensor.data is None:
            raise MessageError("tensor has neither 'data' nor parameters.binary_data_size")
        return _from_json(tensor.data, tensor.datatype, tensor.shape, count, params), offset
    if tensor.data is not None:
        raise MessageError("tensor has both 'data' and parameters.binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BinaryFormatError(f"binary_data_size must be a non-negative integer, got {size!r}")
    left = binary.nbytes - offset
    if size > left:
        raise BinaryFormatError(
            f"binary_data_size is {size} but only {left} bytes of binary data remain"
            + ("" if binary.nbytes else " (is Inference-Header-Content-Length missing?)")
        )
    chunk = binary[offset : offset + size]
    return _from_binary(chunk, tensor.datatype, tensor.shape, count, limits), offset + size


def _check_shape_limits(shape: Sequence[int], limits: Limits) -> int:
    if shape and min(shape) < 0:
        i = next(i for i, dim in enumerate(shape) if dim < 0)
        raise ShapeError(f"dimension {i} is {shape[i]}; dimensions must be >= 0")
    if len(shape) > limits.tensor_max_dims:
        raise LimitExceededError(
            f"shape has {len(shape)} dimensions; the limit is {limits.tensor_max_dims}"
        )
    # Checked per dimension too: with a zero elsewhere the product passes, but numpy cannot
    # build a dimension past its index range (and a shape is never meant to hold one).
    largest = max(shape, default=0)
    if largest > limits.tensor_max_elements:
        i = shape.index(largest)
        raise LimitExceededError(
            f"dimension {i} is {largest}; the limit is {limits.tensor_max_elements} "
            "(tensor_max_elements)"
        )
    count = math.prod(shape)
    if count > limits.tensor_max_elements:
        raise LimitExceededError(
            f"shape {list(shape)} has {count} elements; the limit is {limits.tensor_max_elements}"
        )
    return count


def _from_binary(
    chunk: memoryview, datatype: Datatype, shape: list[int], count: int, limits: Limits
) -> np.ndarray[Any, Any]:
    if datatype is Datatype.BYTES:
        return deserialize_bytes_tensor(chunk, count, limits=limits).reshape(shape)
    dtype = datatype.numpy_dtype
    if chunk.nbytes != count * dtype.itemsize:
        raise ShapeError(
            f"shape {shape} of {datatype.value} needs {count * dtype.itemsize} bytes, "
            f"binary_data_size is {chunk.nbytes}",
        )
    array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
    if datatype is Datatype.BOOL and count and np.frombuffer(chunk, np.uint8).max() > 1:
        raise DataError("BOOL bytes must be 0 or 1")
    if not array.flags.aligned:
        array = array.copy()
    return array


def _from_json(
    data: list[Any], datatype: Datatype, shape: list[int], count: int, params: Mapping[str, Any]
) -> np.ndarray[Any, Any]:
    if datatype is Datatype.BYTES:
        return _bytes_from_json(data, shape, count, params)
    try:
        source = np.array(data)
    except (ValueError, OverflowError):
        _flatten(data)  # names the ragged place
        raise DataError("data is not a regular array of numbers") from None
    _check_element_count(source, shape, count)
    target = datatype.numpy_dtype
    if count == 0:
        return np.empty(shape, dtype=target)
    if (
        datatype.is_integer
        and source.dtype.kind == "f"
        and np.abs(source).max() >= _EXACT_FLOAT_INT
    ):
        # numpy mixes int64 and uint64 values as float64; go back to the exact Python ints.
        source = np.array(_flatten(data), dtype=object)
    if source.dtype.kind == "O":
        source = _coerce_objects(source.reshape(-1), datatype)
    kind = source.dtype.kind
    if kind in "USV":
        raise DataError(f"{datatype.value} data must be numbers; found a string")
    if datatype is Datatype.BOOL:
        if kind != "b":
            raise DataError("BOOL data must be true or false")
        return source.reshape(shape)
    if kind == "b":
        raise DataError(f"{datatype.value} data must be numbers; found a boolean")
    flat = source.reshape(-1)
    if datatype.is_integer:
        if kind == "f":
            # JSON writers may print integers as 1.0; anything with a fraction is an error.
            with np.errstate(invalid="ignore"):
                fractional = ~np.isfinite(flat) | (flat != np.trunc(flat))
            if fractional.any():
                index = int(np.flatnonzero(fractional)[0])
                raise DataError(
                    f"{datatype.value} data must be integers; element {index} is {flat[index].item()!r}",
                )
        info = np.iinfo(target)
        outside = (flat < info.min) | (flat > info.max)
        if outside.any():
            index = int(np.flatnonzero(outside)[0])
            raise _int_overflow(index, int(flat[index]), datatype)
        return source.astype(target).reshape(shape)
    # Floats: a finite value that becomes infinite has overflowed the type.
    with np.errstate(over="ignore"):
        result = source.astype(target)
    overflowed = np.isinf(result.reshape(-1)) & np.isfinite(flat.astype(np.float64))
    if overflowed.any():
        index = int(np.flatnonzero(overflowed)[0])
        raise ValueOverflowError(
            f"element {index} is {flat[index].item()!r}, outside {datatype.value}'s range",
        )
    return result.reshape(shape)


def _coerce_objects(flat: np.ndarray[Any, Any], datatype: Datatype) -> np.ndarray[Any, Any]:
    """Numbers numpy could not combine by itself: integers past 64 bits, or stray types."""
    for i, element in enumerate(flat):
        is_number = isinstance(element, (int, float)) and not isinstance(element, bool)
        if datatype is Datatype.BOOL and not isinstance(element, bool):
            raise DataError(f"BOOL data must be true or false; element {i} is {element!r}")
        if datatype is not Datatype.BOOL and not is_number:
            raise DataError(
                f"{datatype.value} data must be numbers; element {i} is {element!r}",
            )
        if datatype.is_integer:
            if isinstance(element, float):
                if element.is_integer() and abs(element) < _EXACT_FLOAT_INT:
                    continue
                raise DataError(
                    f"{datatype.value} data must be integers; element {i} is {element!r}",
                )
            info = np.iinfo(datatype.numpy_dtype)
            if not info.min <= element <= info.max:
                raise _int_overflow(i, element, datatype)
        elif datatype.is_float:
            try:
                float(element)
            except OverflowError:
                raise ValueOverflowError(
                    f"element {i} is {element}, outside {datatype.value}'s range"
                ) from None
    if datatype.is_float:
        return np.array([float(e) for e in flat], dtype=np.float64)
    return np.array([int(e) for e in flat], dtype=datatype.numpy_dtype)


def _int_overflow(index: int, value: int, datatype: Datatype) -> ValueOverflowError:
    info = np.iinfo(datatype.numpy_dtype)
    return ValueOverflowError(
        f"element {index} is {value}, outside {datatype.value}'s range [{info.min}, {info.max}]",
    )


def _bytes_from_json(
    data: list[Any], shape: list[int], count: int, params: Mapping[str, Any]
) -> np.ndarray[Any, Any]:
    flat = _flatten(data)
    if len(flat) != count:
        raise ShapeError(f"shape {shape} holds {count} elements but data has {len(flat)}")
    encoding = params.get(CONTENT_TYPE)
    if encoding not in (None, BASE64, "str"):
        raise DataError(f"unsupported content_type {encoding!r} for BYTES")
    out = np.empty(count, dtype=object)
    for i, element in enumerate(flat):
        if not isinstance(element, str):
            raise DataError(
                f"BYTES data must be strings; element {i} is {type(element).__name__}",
            )
        if encoding == BASE64:
            try:
                out[i] = base64.b64decode(element, validate=True)
            except binascii.Error:
                raise DataError(f"element {i} is not valid base64") from None
        else:
            out[i] = element.encode("utf-8")
    return out.reshape(shape)


def _check_element_count(source: np.ndarray[Any, Any], shape: list[int], count: int) -> None:
    if source.ndim > 1 and list(source.shape) != shape:
        raise ShapeError(
            f"nested data has shape {list(source.shape)} but the tensor's shape is {shape}",
        )
    if source.size != count:
        raise ShapeError(f"shape {shape} holds {count} elements but data has {source.size}")


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major elements of nested lists; :class:`DataError` at the first ragged place."""
    if not data or not isinstance(data[0], list):
        for i, element in enumerate(data):
            if isinstance(element, list):
                raise DataError(f"data[{i}] is a list but data[0] is not: ragged data")
        return data
    out: list[Any] = []

    def walk(node: list[Any], path: str, expected: Sequence[int]) -> None:
        if len(node) != expected[0]:
            raise DataError(
                f"{path} has {len(node)} elements, expected {expected[0]}: ragged data",
            )
        for i, child in enumerate(node):
            if len(expected) > 1:
                if not isinstance(child, list):
                    raise DataError(f"{path}[{i}] is not a list: ragged data")
                walk(child, f"{path}[{i}]", expected[1:])
            else:
                if isinstance(child, list):
                    raise DataError(f"{path}[{i}] is a list: ragged data")
                out.append(child)

    expected: list[int] = []
    node: Any = data
    while isinstance(node, list):
        expected.append(len(node))
        node = node[0] if node else None
    walk(data, "data", expected)
    return out


# ---------------------------------------------------------------------------------------------
# pydantic -> ProtocolError


def _protocol_error(exc: ValidationError) -> ProtocolError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    location = _format_loc(first["loc"]) or None
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if first["type"] == "json_invalid":
        return MessageError(f"malformed JSON: {first['ctx']['error']}")
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ProtocolError):
        return type(cause)(cause.message + more, location=location)
    loc = first["loc"]
    if first["type"] == "enum" and loc and loc[-1] == "datatype":
        try:
            parse_datatype(first["input"])
        except DatatypeError as exc:
            return DatatypeError(exc.message + more, location=location)
    if "shape" in loc:
        at = loc.index("shape")
        shape_location = _format_loc(loc[: at + 1])
        if len(loc) > at + 1 and isinstance(loc[at + 1], int):
            return ShapeError(
                f"dimension {loc[at + 1]} is {first['input']!r}; dimensions must be integers"
                + more,
                location=shape_location,
            )
        return ShapeError(
            f"shape must be a list of integers, got {first['input']!r}" + more,
            location=shape_location,
        )
    message = first["msg"]
    if first["type"] == "missing":
        message = "required field is missing"
    return MessageError(message + more, location=location)


def _format_loc(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
