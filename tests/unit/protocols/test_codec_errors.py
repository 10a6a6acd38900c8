"""Each kind of bad input raises its own error, with a message that says what and where."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from protocols import (
    BinaryFormatError,
    DataError,
    DatatypeError,
    LimitExceededError,
    Limits,
    MessageError,
    PayloadTooLargeError,
    ProtocolError,
    ShapeError,
    ValueOverflowError,
    check_request_id,
    decode_mqtt_request,
    decode_request,
    decode_response,
    encode_mqtt_request,
    encode_request,
    parse_header_length,
)


def request(data: Any = None, shape: Any = None, datatype: str = "FP32", **tensor: Any) -> bytes:
    entry: dict[str, Any] = {
        "name": "x",
        "shape": [2] if shape is None else shape,
        "datatype": datatype,
    }
    if data is not None:
        entry["data"] = data
    entry.update(tensor)
    return json.dumps({"inputs": [entry]}).encode()


def raises(
    kind: type[ProtocolError], body: bytes, *fragments: str, header_length: int | None = None
) -> ProtocolError:
    with pytest.raises(kind) as info:
        decode_request(body, header_length)
    assert type(info.value) is kind
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


# -- numbers that do not fit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "value", "fragment"),
    [
        ("UINT8", 300, "element 1 is 300, outside UINT8's range [0, 255]"),
        ("UINT8", -1, "element 1 is -1, outside UINT8's range [0, 255]"),
        ("INT8", -129, "element 1 is -129, outside INT8's range [-128, 127]"),
        ("INT32", 2**31, "element 1 is 2147483648, outside INT32's range"),
        ("INT64", 2**63, "element 1 is 9223372036854775808, outside INT64's range"),
        ("UINT64", 2**64, "element 1 is 18446744073709551616, outside UINT64's range"),
        ("INT64", -(2**70), "outside INT64's range"),
        ("FP16", 1e10, "element 1 is 10000000000.0, outside FP16's range"),
        ("FP32", 1e39, "outside FP32's range"),
        ("BF16", 1e39, "outside BF16's range"),
        ("FP64", 10**400, "outside FP64's range"),
    ],
)
def test_overflow(datatype: str, value: int | float, fragment: str) -> None:
    err = raises(ValueOverflowError, request([0, value], datatype=datatype), fragment)
    assert err.location == "inputs[0] 'x'"


def test_fraction_in_integer_tensor() -> None:
    raises(
        DataError,
        request([1, 2.5], datatype="INT32"),
        "INT32 data must be integers; element 1 is 2.5",
    )


def test_string_in_numeric_tensor() -> None:
    raises(DataError, request([1, "2"]), "FP32 data must be numbers; found a string")


def test_bool_tensor_needs_booleans() -> None:
    raises(DataError, request([1, 0], datatype="BOOL"), "BOOL data must be true or false")


def test_null_in_data() -> None:
    raises(
        DataError,
        request([1, None], datatype="INT64"),
        "INT64 data must be numbers; element 1 is None",
    )


def test_non_string_bytes_element() -> None:
    raises(
        DataError,
        request(["a", 1], datatype="BYTES"),
        "BYTES data must be strings; element 1 is int",
    )


def test_bad_base64_bytes_element() -> None:
    body = request(["!!"], shape=[1], datatype="BYTES", parameters={"content_type": "base64"})
    raises(DataError, body, "element 0 is not valid base64")


# -- shapes -------------------------------------------------------------------------------------


def test_negative_dimension() -> None:
    err = raises(
        ShapeError, request([1.0], shape=[1, -3]), "dimension 1 is -3; dimensions must be >= 0"
    )
    assert err.location == "inputs[0] 'x'"


def test_non_integer_dimension() -> None:
    raises(
        ShapeError, request([1.0], shape=[1.5]), "dimension 0 is 1.5; dimensions must be integers"
    )


def test_json_element_count_disagrees_with_shape() -> None:
    raises(
        ShapeError,
        request([1.0, 2.0, 3.0], shape=[2, 2]),
        "shape [2, 2] holds 4 elements but data has 3",
    )


def test_nested_data_disagrees_with_shape() -> None:
    raises(
        ShapeError,
        request([[1, 2], [3, 4], [5, 6]], shape=[2, 3]),
        "nested data has shape [3, 2] but the tensor's shape is [2, 3]",
    )


def test_binary_size_disagrees_with_shape() -> None:
    header = request(shape=[2, 3], parameters={"binary_data_size": 20})
    raises(
        ShapeError,
        header + bytes(20),
        "shape [2, 3] of FP32 needs 24 bytes, binary_data_size is 20",
        header_length=len(header),
    )


def test_bytes_tensor_with_more_elements_than_shape() -> None:
    raw = struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"
    header = request(shape=[1], datatype="BYTES", parameters={"binary_data_size": len(raw)})
    raises(ShapeError, header + raw, "more than the 1 elements", header_length=len(header))


# -- ragged data --------------------------------------------------------------------------------


def test_ragged_nested_data() -> None:
    raises(
        DataError,
        request([[1, 2], [3]], shape=[2, 2]),
        "data[1] has 1 elements, expected 2: ragged data",
    )


def test_ragged_mixed_depth() -> None:
    raises(DataError, request([[1, 2], 3], shape=[2, 2]), "data[1] is not a list: ragged data")


def test_ragged_bytes_data() -> None:
    raises(DataError, request([["a"], "b"], shape=[2], datatype="BYTES"), "ragged data")


# -- datatypes ----------------------------------------------------------------------------------


def test_unknown_datatype() -> None:
    err = raises(
        DatatypeError, request([1], datatype="FP8"), "unknown datatype 'FP8'; expected one of BOOL"
    )
    assert err.location == "inputs[0].datatype"


def test_numpy_dtype_without_wire_datatype() -> None:
    with pytest.raises(DatatypeError, match="complex128 has no Open Inference Protocol datatype"):
        encode_request({"x": np.ones(2, dtype=np.complex128)})


# -- binary framing -----------------------------------------------------------------------------


def test_truncated_binary_section() -> None:
    header = request(shape=[4], parameters={"binary_data_size": 16})
    raises(
        BinaryFormatError,
        header + bytes(10),
        "binary_data_size is 16 but only 10 bytes of binary data remain",
        header_length=len(header),
    )


def test_binary_size_without_binary_section() -> None:
    raises(
        BinaryFormatError,
        request(shape=[4], parameters={"binary_data_size": 16}),
        "is Inference-Header-Content-Length missing?",
    )


def test_trailing_bytes_after_last_tensor() -> None:
    header = request(shape=[1], parameters={"binary_data_size": 4})
    raises(
        BinaryFormatError,
        header + bytes(7),
        "3 bytes of binary data follow the last tensor",
        header_length=len(header),
    )


def test_truncated_bytes_element() -> None:
    raw = struct.pack("<I", 10) + b"abc"
    header = request(shape=[1], datatype="BYTES", parameters={"binary_data_size": len(raw)})
    raises(
        BinaryFormatError,
        header + raw,
        "BYTES element 0 declares 10 bytes but only 3 remain",
        header_length=len(header),
    )


def test_bytes_element_cut_inside_its_length_prefix() -> None:
    raw = b"\x01\x00"
    header = request(shape=[1], datatype="BYTES", parameters={"binary_data_size": 2})
    raises(
        BinaryFormatError,
        header + raw,
        "ends inside the length prefix of element 0",
        header_length=len(header),
    )


def test_bool_bytes_other_than_zero_or_one() -> None:
    header = request(shape=[2], datatype="BOOL", parameters={"binary_data_size": 2})
    raises(DataError, header + b"\x01\x07", "BOOL bytes must be 0 or 1", header_length=len(header))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("12x", "must be a non-negative integer, got '12x'"),
        ("-1", "must be a non-negative integer, got '-1'"),
        ("500", "Inference-Header-Content-Length is 500 but the body has only 100 bytes"),
    ],
)
def test_bad_header_length(value: str, fragment: str) -> None:
    with pytest.raises(BinaryFormatError) as info:
        parse_header_length(value, 100)
    assert fragment in str(info.value)


def test_header_length_past_end_of_body() -> None:
    body = encode_request({"x": np.ones(4, np.float32)}, binary=True)
    raw = body.to_bytes()
    raises(BinaryFormatError, raw, "is 9999 but the body has only", header_length=9999)


def test_wrong_header_length_splits_json() -> None:
    body = encode_request({"x": np.ones(4, np.float32)}, binary=True)
    raises(
        MessageError,
        body.to_bytes(),
        "malformed JSON",
        header_length=(body.header_length or 0) - 12,
    )


def test_truncated_mqtt_frame() -> None:
    with pytest.raises(
        BinaryFormatError, match="frame is truncated: 6 bytes, the HIB1 head alone is 8"
    ):
        decode_mqtt_request(b"HIB1\x10\x00")


def test_mqtt_header_length_past_end() -> None:
    payload = encode_mqtt_request("m", {"x": np.ones(32, np.float32)}, binary=True)
    forged = payload[:4] + struct.pack("<I", len(payload)) + payload[8:]
    with pytest.raises(
        BinaryFormatError,
        match=f"header length {len(payload)} runs past the end of the {len(payload)}-byte frame",
    ):
        decode_mqtt_request(forged)


def test_mqtt_payload_neither_json_nor_frame() -> None:
    with pytest.raises(
        BinaryFormatError, match=r"payload starts with b'GIF8'; expected '\{' \(JSON\) or b'HIB1'"
    ):
        decode_mqtt_request(b"GIF89a")


def test_mqtt_request_without_model_name() -> None:
    payload = encode_request({"x": np.ones(1)}).to_bytes()
    with pytest.raises(MessageError, match="model_name: required field is missing"):
        decode_mqtt_request(payload)


def test_empty_mqtt_payload() -> None:
    with pytest.raises(MessageError, match="payload is empty"):
        decode_mqtt_request(b"")


# -- messages -----------------------------------------------------------------------------------


def test_malformed_json() -> None:
    raises(
        MessageError,
        b'{"inputs": [',
        "malformed JSON: EOF while parsing a list at line 1 column 12",
    )


def test_missing_inputs() -> None:
    raises(MessageError, b'{"id": "1"}', "inputs: required field is missing")


def test_tensor_without_data() -> None:
    raises(MessageError, request(), "tensor has neither 'data' nor parameters.binary_data_size")


def test_tensor_with_data_and_binary() -> None:
    raises(MessageError, request([1.0, 2.0], parameters={"binary_data_size": 8}), "both 'data' and")


def test_duplicate_input_names() -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}
    ).encode()
    raises(MessageError, body, "tensor name 'x' appears twice")


def test_shared_memory_is_refused() -> None:
    raises(
        MessageError,
        request(shape=[1], parameters={"shared_memory_region": "r"}),
        "shared-memory tensors are not supported",
    )


def test_response_with_wrong_field_type() -> None:
    with pytest.raises(MessageError, match=r"model_name: Input should be a valid string"):
        decode_response(b'{"model_name": 5, "outputs": []}')


# -- limits -------------------------------------------------------------------------------------


def test_payload_limit() -> None:
    body = request([1.0, 2.0])
    with pytest.raises(
        PayloadTooLargeError, match=f"body is {len(body)} bytes; the limit is 16"
    ) as info:
        decode_request(body, limits=Limits(payload_max_bytes=16))
    assert info.value.status == 413


def test_mqtt_payload_limit() -> None:
    payload = encode_mqtt_request("m", {"x": np.ones(100)})
    with pytest.raises(PayloadTooLargeError, match="payload is"):
        decode_mqtt_request(payload, limits=Limits(payload_max_bytes=100))


def test_header_limit() -> None:
    body = encode_request({"x": np.ones(64, np.float32)}, binary=True)
    with pytest.raises(PayloadTooLargeError, match="JSON header is"):
        decode_request(body.to_bytes(), body.header_length, limits=Limits(header_max_bytes=32))


def test_element_limit_checked_before_allocation() -> None:
    # 2**40 elements would need terabytes; the limit refuses it before numpy sees it.
    body = request(shape=[2**20, 2**20], parameters={"binary_data_size": 0})
    raises(
        LimitExceededError,
        body,
        "shape [1048576, 1048576] has 1099511627776 elements; the limit is",
        header_length=len(body),
    )


def test_dimension_limit() -> None:
    body = request([1.0], shape=[1] * 17)
    raises(LimitExceededError, body, "shape has 17 dimensions; the limit is 16")


def test_bytes_element_limit() -> None:
    raw = struct.pack("<I", 100) + bytes(100)
    header = request(shape=[1], datatype="BYTES", parameters={"binary_data_size": len(raw)})
    with pytest.raises(LimitExceededError, match="BYTES element 0 is 100 bytes; the limit is 64"):
        decode_request(header + raw, len(header), limits=Limits(bytes_element_max_bytes=64))


def test_tensor_count_limit() -> None:
    body = encode_request({f"x{i}": np.ones(1) for i in range(5)})
    with pytest.raises(LimitExceededError, match="5 tensors; the limit is 4"):
        decode_request(body.to_bytes(), limits=Limits(tensors_max=4))


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"Limits\.payload_max_bytes must be a positive integer"):
        Limits(payload_max_bytes=0)


def test_every_error_is_a_protocol_error_with_a_status() -> None:
    for kind in (MessageError, DataError, ShapeError, BinaryFormatError, DatatypeError):
        assert issubclass(kind, ProtocolError)
        assert issubclass(kind, ValueError)
        assert kind("x").status == 400


@pytest.mark.parametrize(
    "shape",
    [
        [0, 100000000000000000000],
        [9223372036854775808, 0],
        [0, 2**63 - 1],
        [0, (1 << 26) + 1],
    ],
)
def test_a_dimension_past_the_element_limit_is_refused_even_with_a_zero(shape: list[int]) -> None:
    # No elements, but numpy cannot build the shape (or the size overflows): refused up front.
    err = raises(LimitExceededError, request([], shape=shape), "dimension", "the limit is")
    assert err.status == 400


def test_binary_zero_size_tensor_with_huge_dimensions_is_refused() -> None:
    header = request(shape=[0, 4294967296, 4294967296], parameters={"binary_data_size": 0})
    raises(LimitExceededError, header, "dimension 1 is 4294967296", header_length=len(header))


@pytest.mark.parametrize("shape", [[0, 4294967296, 4294967296], [2**64, 0]])
def test_mqtt_request_with_an_impossible_shape_is_refused(shape: list[int]) -> None:
    header = json.dumps(
        {
            "model_name": "m",
            "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": []}],
        }
    ).encode()
    with pytest.raises(LimitExceededError, match="dimension"):
        decode_mqtt_request(header)


def test_a_zero_sized_tensor_within_the_limits_still_decodes() -> None:
    decoded = decode_request(request([], shape=[0, 1 << 26]))
    assert decoded.tensors["x"].shape == (0, 1 << 26)


# -- request ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("x" * 257, "request id is 257 bytes in UTF-8; the limit is 256"),
        ("é" * 129, "request id is 258 bytes in UTF-8"),
        ("a\r\nb", "control character '\\r' at 1"),
        ("\x7f", "control character"),
        ("\x9b", "control character"),
        ("\ud800", "lone surrogate"),
    ],
)
def test_request_ids_past_the_rules(value: str, fragment: str) -> None:
    with pytest.raises(MessageError) as info:
        check_request_id(value)
    assert fragment in str(info.value)
    assert info.value.location == "id"


@pytest.mark.parametrize("value", ["", "a", "x" * 256, "ünïcødé 日本 / ? # %", "é" * 128])
def test_request_ids_within_the_rules(value: str) -> None:
    assert check_request_id(value) == value
