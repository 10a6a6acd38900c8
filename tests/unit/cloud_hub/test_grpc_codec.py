"""The gRPC codec: protobuf messages to the service's typed values and back, limits first."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import InferResult
from tritonclient.grpc import service_pb2 as pb

from cloud_hub.grpc.codec import decode_infer_request, encode_infer_response
from protocols import Limits
from protocols.errors import (
    DataError,
    DatatypeError,
    LimitExceededError,
    MessageError,
    ShapeError,
)

LIMITS = Limits(tensors_max=2, tensor_max_elements=8, bytes_element_max_bytes=4, tensor_max_dims=3)


def raw(name: str, datatype: str, shape: list[int], data: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id="r")
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return request


def test_raw_contents_of_every_fixed_size_type_and_bf16() -> None:
    for dtype, datatype in [
        (np.uint8, "UINT8"),
        (np.int16, "INT16"),
        (np.uint64, "UINT64"),
        (np.float16, "FP16"),
        (np.float64, "FP64"),
        (ml_dtypes.bfloat16, "BF16"),
        (np.bool_, "BOOL"),
    ]:
        array = np.arange(6).astype(dtype).reshape(2, 3)
        decoded = decode_infer_request(raw("x", datatype, [2, 3], array.tobytes()), LIMITS)
        np.testing.assert_array_equal(decoded.tensors["x"], array)
        assert decoded.tensors["x"].dtype == np.dtype(dtype)


def test_options_reach_the_service() -> None:
    request = raw("x", "FP32", [1, 2], np.ones(2, np.float32).tobytes())
    request.parameters["timeout"].int64_param = 5000
    wanted = request.outputs.add(name="y")
    wanted.parameters["classification"].int64_param = 3
    decoded = decode_infer_request(request, LIMITS)
    assert decoded.request.id == "r"
    assert decoded.request.parameters == {"timeout": 5000}
    assert decoded.request.outputs is not None
    assert decoded.request.outputs[0].name == "y"
    assert decoded.request.outputs[0].parameters == {"classification": 3}


@pytest.mark.parametrize(
    ("request_", "error", "fragment"),
    [
        (raw("x", "FP32", [1, 3], bytes(8)), ShapeError, "needs 12 bytes"),
        (raw("x", "FP32", [3, 3], bytes(36)), LimitExceededError, "has 9 elements; the limit is 8"),
        (raw("x", "FP32", [1, 1, 1, 1], bytes(4)), LimitExceededError, "4 dimensions"),
        (raw("x", "FP8", [1], bytes(1)), DatatypeError, "unknown datatype 'FP8'"),
        (raw("x", "BYTES", [1], b"\x05\x00\x00\x00hello"), LimitExceededError, "5 bytes"),
        (raw("x", "BOOL", [2], b"\x00\x02"), DataError, "BOOL bytes must be 0 or 1"),
        (raw("", "FP32", [1], bytes(4)), MessageError, "input has no name"),
    ],
)
def test_bad_raw_inputs(request_: pb.ModelInferRequest, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment.replace("[", r"\[")):
        decode_infer_request(request_, LIMITS)


def test_structure_is_checked_before_contents() -> None:
    request = pb.ModelInferRequest(model_name="m")
    for name in ("a", "b", "c"):
        request.inputs.add(name=name, datatype="FP32", shape=[1])
    with pytest.raises(LimitExceededError, match="3 tensors; the limit is 2"):
        decode_infer_request(request, LIMITS)
    request = raw("a", "FP32", [1], bytes(4))
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.raw_input_contents.append(bytes(4))
    with pytest.raises(MessageError, match="appears twice"):
        decode_infer_request(request, LIMITS)
    request = raw("a", "FP32", [1], bytes(4))
    request.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(MessageError, match="contents must be empty"):
        decode_infer_request(request, LIMITS)


def test_typed_contents_in_the_wrong_field_are_refused() -> None:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="INT64", shape=[2])
    tensor.contents.int_contents.extend([1, 2])
    with pytest.raises(DataError, match="INT64 data belongs in int64_contents"):
        decode_infer_request(request, LIMITS)


def test_responses_read_back_with_tritonclient() -> None:
    outputs = {
        "half": np.array([[0.5, -2.0]], np.float16),
        "text": np.array([b"a", b"", "é".encode()], dtype=object),
        "flag": np.array([True, False]),
    }
    response = encode_infer_response(
        outputs, model_name="m", model_version="3", id="r", parameters={"served_by": "cloud"}
    )
    assert response.parameters["served_by"].string_param == "cloud"
    result = InferResult(response)
    for name, array in outputs.items():
        got = result.as_numpy(name)
        assert got.shape == array.shape
        assert list(got.reshape(-1)) == list(array.reshape(-1))
    assert [o.datatype for o in response.outputs] == ["FP16", "BYTES", "BOOL"]
