"""``ModelInferRequest`` in, typed values out; arrays in, ``ModelInferResponse`` out.

Inputs come as ``raw_input_contents`` (one little-endian buffer per input, BYTES elements
length-prefixed, as Triton's binary extension lays them out) or as typed ``contents``; a request
uses one or the other for all its inputs, as in Triton. FP16 and BF16 have no typed field and
travel raw only. Outputs always go back in ``raw_output_contents``, which every client reads
(Triton answers the same way). Limits are checked before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from protocols import (
    Datatype,
    DecodedRequest,
    Limits,
    datatype_of,
    decode_binary_tensor,
    encode_binary_tensor,
    parse_datatype,
)
from protocols.errors import (
    DataError,
    LimitExceededError,
    MessageError,
    ShapeError,
    ValueOverflowError,
)
from protocols.oip import InferenceRequest, RequestOutput

__all__ = ["decode_infer_request", "encode_infer_response", "from_parameters"]

Arrays = dict[str, np.ndarray[Any, Any]]

# Which field of InferTensorContents holds each datatype (Triton's table).
_CONTENTS: dict[Datatype, str] = {
    Datatype.BOOL: "bool_contents",
    Datatype.INT8: "int_contents",
    Datatype.INT16: "int_contents",
    Datatype.INT32: "int_contents",
    Datatype.INT64: "int64_contents",
    Datatype.UINT8: "uint_contents",
    Datatype.UINT16: "uint_contents",
    Datatype.UINT32: "uint_contents",
    Datatype.UINT64: "uint64_contents",
    Datatype.FP32: "fp32_contents",
    Datatype.FP64: "fp64_contents",
    Datatype.BYTES: "bytes_contents",
}


def from_parameters(params: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """An ``InferParameter`` map as plain values (the form the HTTP path's models carry)."""
    out: dict[str, bool | int | float | str] = {}
    for key, param in params.items():
        kind = param.WhichOneof("parameter_choice")
        if kind is None:
            raise MessageError(f"parameter {key!r} has no value")
        out[key] = getattr(param, kind)
    return out


def decode_infer_request(request: Any, limits: Limits) -> DecodedRequest:
    """The request's tensors and options as the service takes them; :class:`ProtocolError`
    (or a subclass) names what is wrong and where."""
    inputs = request.inputs
    if len(inputs) > limits.tensors_max:
        raise LimitExceededError(
            f"{len(inputs)} tensors; the limit is {limits.tensors_max}", location="inputs"
        )
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise MessageError(
            f"expected {len(inputs)} raw_input_contents, one per input, got {len(raw)}"
        )
    tensors: Arrays = {}
    for index, tensor in enumerate(inputs):
        location = f"inputs[{index}] {tensor.name!r}"
        if not tensor.name:
            raise MessageError("input has no name", location=location)
        if tensor.name in tensors:
            raise MessageError(f"tensor name {tensor.name!r} appears twice", location=location)
        datatype = parse_datatype(tensor.datatype, location=location)
        shape = list(tensor.shape)
        if "shared_memory_region" in tensor.parameters:
            raise MessageError("shared-memory tensors are not supported", location=location)
        if raw:
            if tensor.HasField("contents"):
                raise MessageError(
                    "contents must be empty when raw_input_contents is used", location=location
                )
            tensors[tensor.name] = decode_binary_tensor(
                raw[index], datatype, shape, limits=limits, location=location
            )
        else:
            tensors[tensor.name] = _from_contents(
                tensor.contents, datatype, shape, limits, location
            )
    outputs = [
        RequestOutput.model_construct(name=o.name, parameters=from_parameters(o.parameters) or None)
        for o in request.outputs
    ]
    options = InferenceRequest.model_construct(
        id=request.id or None,
        parameters=from_parameters(request.parameters) or None,
        inputs=[],
        outputs=outputs or None,
    )
    return DecodedRequest(request=options, tensors=tensors)


def _from_contents(
    contents: Any, datatype: Datatype, shape: list[int], limits: Limits, location: str
) -> np.ndarray[Any, Any]:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise DataError(
            f"{datatype.value} has no typed contents field; send it in raw_input_contents",
            location=location,
        )
    if any(d < 0 for d in shape):
        raise ShapeError(f"shape {shape} has a negative dimension", location=location)
    if len(shape) > limits.tensor_max_dims:
        raise LimitExceededError(
            f"shape has {len(shape)} dimensions; the limit is {limits.tensor_max_dims}",
            location=location,
        )
    count = math.prod(shape)
    if count > limits.tensor_max_elements:
        raise LimitExceededError(
            f"shape {shape} has {count} elements; the limit is {limits.tensor_max_elements}",
            location=location,
        )
    values = getattr(contents, field)
    for other in _CONTENTS.values():
        if other != field and len(getattr(contents, other)):
            raise DataError(
                f"{datatype.value} data belongs in {field}, found {other}", location=location
            )
    if len(values) != count:
        raise ShapeError(
            f"shape {shape} holds {count} elements but {field} has {len(values)}",
            location=location,
        )
    if datatype is Datatype.BYTES:
        out = np.empty(count, dtype=object)
        for i, element in enumerate(values):
            if len(element) > limits.bytes_element_max_bytes:
                raise LimitExceededError(
                    f"BYTES element {i} is {len(element)} bytes; the limit is "
                    f"{limits.bytes_element_max_bytes}",
                    location=location,
                )
            out[i] = bytes(element)
        return out.reshape(shape)
    target = datatype.numpy_dtype
    if datatype in (Datatype.INT8, Datatype.INT16, Datatype.UINT8, Datatype.UINT16):
        wide = np.fromiter(values, dtype=np.int64, count=count)
        info = np.iinfo(target)
        outside = (wide < info.min) | (wide > info.max)
        if outside.any():
            index = int(np.flatnonzero(outside)[0])
            raise ValueOverflowError(
                f"element {index} is {int(wide[index])}, outside {datatype.value}'s range "
                f"[{info.min}, {info.max}]",
                location=location,
            )
        return wide.astype(target).reshape(shape)
    return np.fromiter(values, dtype=target, count=count).reshape(shape)


def encode_infer_response(
    outputs: Arrays,
    *,
    model_name: str,
    model_version: str,
    id: str | None,
    parameters: Mapping[str, str],
) -> Any:
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=id or ""
    )
    for key, value in parameters.items():
        response.parameters[key].string_param = value
    for name, array in outputs.items():
        datatype = datatype_of(array.dtype, location=f"outputs {name!r}")
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype.value
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(bytes(encode_binary_tensor(array, datatype)))
    return response
