"""Every datatype survives JSON and binary, in requests, responses and MQTT frames."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import (
    Datatype,
    decode_mqtt_request,
    decode_mqtt_response,
    decode_request,
    decode_response,
    encode_mqtt_request,
    encode_mqtt_response,
    encode_request,
    encode_response,
)

from .strategies import assert_same, tensors

ALL = list(Datatype)


@pytest.mark.parametrize("datatype", ALL, ids=lambda d: d.value)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_request_round_trip(datatype: Datatype, binary: bool, data: st.DataObject) -> None:
    array = data.draw(tensors(datatype))
    body = encode_request({"x": array, "y": np.arange(3, dtype=np.int32)}, binary=binary, id="r1")
    assert (body.header_length is not None) == binary
    decoded = decode_request(body.to_bytes(), body.header_length)
    assert decoded.request.id == "r1"
    assert decoded.request.inputs[0].datatype is datatype
    assert_same(array, decoded.tensors["x"])
    assert_same(np.arange(3, dtype=np.int32), decoded.tensors["y"])


@pytest.mark.parametrize("datatype", ALL, ids=lambda d: d.value)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_response_round_trip(datatype: Datatype, binary: bool, data: st.DataObject) -> None:
    array = data.draw(tensors(datatype))
    body = encode_response({"out": array}, model_name="m", model_version="3", binary=binary)
    decoded = decode_response(body.to_bytes(), body.header_length)
    assert decoded.response.model_name == "m"
    assert decoded.response.model_version == "3"
    assert_same(array, decoded.tensors["out"])


@pytest.mark.parametrize("datatype", ALL, ids=lambda d: d.value)
@settings(max_examples=25, deadline=None)
@given(data=st.data(), binary=st.booleans())
def test_mqtt_round_trip(datatype: Datatype, data: st.DataObject, binary: bool) -> None:
    array = data.draw(tensors(datatype))
    payload = encode_mqtt_request("digits", {"x": array}, model_version="1", id="7", binary=binary)
    assert payload.startswith(b"HIB1" if binary else b"{")
    decoded = decode_mqtt_request(payload)
    assert decoded.request.model_name == "digits"  # type: ignore[attr-defined]
    assert decoded.request.model_version == "1"  # type: ignore[attr-defined]
    assert_same(array, decoded.tensors["x"])

    reply = decode_mqtt_response(
        encode_mqtt_response({"y": array}, model_name="digits", id="7", binary=binary)
    )
    assert not hasattr(reply, "error")
    assert_same(array, reply.tensors["y"])  # type: ignore[union-attr]


def test_nested_json_data_is_row_major() -> None:
    body = b'{"inputs":[{"name":"x","shape":[2,3],"datatype":"INT32","data":[[1,2,3],[4,5,6]]}]}'
    decoded = decode_request(body)
    assert decoded.tensors["x"].tolist() == [[1, 2, 3], [4, 5, 6]]
    flat = decode_request(body.replace(b"[[1,2,3],[4,5,6]]", b"[1,2,3,4,5,6]"))
    assert np.array_equal(flat.tensors["x"], decoded.tensors["x"])


def test_json_integers_written_as_floats_are_accepted() -> None:
    decoded = decode_request(
        b'{"inputs":[{"name":"x","shape":[2],"datatype":"INT64","data":[1.0,2]}]}'
    )
    assert decoded.tensors["x"].tolist() == [1, 2]


def test_json_special_floats() -> None:
    body = (
        b'{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[NaN,Infinity,-Infinity]}]}'
    )
    x = decode_request(body).tensors["x"]
    assert np.isnan(x[0])
    assert x[1] == np.inf
    assert x[2] == -np.inf


def test_uint64_extremes_in_json() -> None:
    body = (
        b'{"inputs":[{"name":"x","shape":[2],"datatype":"UINT64","data":[0,18446744073709551615]}]}'
    )
    assert decode_request(body).tensors["x"].tolist() == [0, 2**64 - 1]


def test_binary_arrays_are_views_of_the_body() -> None:
    array = np.arange(1024, dtype=np.float32)
    body = encode_request({"x": array}, binary=True)
    assert len(body.header) % 8 == 0
    raw = body.to_bytes()
    decoded = decode_request(raw, body.header_length).tensors["x"]
    assert not decoded.flags.writeable  # a view of the body, not a copy
    assert np.array_equal(decoded, array)


def test_misaligned_binary_data_is_copied_to_aligned_memory() -> None:
    header = b'{"inputs":[{"name":"x","shape":[4],"datatype":"FP64","parameters":{"binary_data_size":32}}]}'
    assert len(header) % 8
    values = np.array([1.5, -2.0, 3.25, 1e300])
    decoded = decode_request(header + values.tobytes(), len(header)).tensors["x"]
    assert decoded.flags.aligned
    assert decoded.tolist() == values.tolist()


def test_auto_sends_half_precision_and_large_tensors_binary() -> None:
    body = encode_request(
        {
            "small": np.ones(3, np.float32),
            "half": np.ones(3, np.float16),
            "big": np.ones(4096, np.float32),
        }
    )
    header = body.header.decode()
    assert '"name":"small","shape":[3],"datatype":"FP32","data"' in header
    assert (
        '"name":"half","shape":[3],"datatype":"FP16","parameters":{"binary_data_size":6}' in header
    )
    assert '"binary_data_size":16384' in header


def test_requested_outputs_and_binary_output_flags() -> None:
    from protocols import wants_binary_output

    body = encode_request({"x": np.ones(1)}, outputs=["a", "b"], binary_outputs=True)
    request = decode_request(body.to_bytes(), body.header_length).request
    assert [o.name for o in request.outputs or []] == ["a", "b"]
    assert wants_binary_output(request, "a")
    plain = decode_request(encode_request({"x": np.ones(1)}).to_bytes()).request
    assert not wants_binary_output(plain, "a")
    everything = decode_request(
        encode_request({"x": np.ones(1)}, binary_outputs=True).to_bytes()
    ).request
    assert wants_binary_output(everything, "anything")


def _mixed(outputs: dict[str, Any]) -> Any:
    return encode_response(outputs, model_name="m", binary={"a": True})


def test_response_binary_choice_per_output() -> None:
    body = _mixed({"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})
    header = body.header.decode()
    assert '"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}' in header
    assert '"name":"b","shape":[2],"datatype":"FP32","data":[1.0,1.0]' in header
    decoded = decode_response(body.to_bytes(), body.header_length)
    assert decoded.tensors["a"].tolist() == decoded.tensors["b"].tolist() == [1.0, 1.0]


def test_content_type_of_payloads() -> None:
    from protocols import CONTENT_TYPE_FRAME, CONTENT_TYPE_JSON, content_type_of

    assert (
        content_type_of(encode_mqtt_request("m", {"x": np.ones(2)}, binary=True))
        == CONTENT_TYPE_FRAME
    )
    assert (
        content_type_of(encode_mqtt_request("m", {"x": np.ones(2)}, binary=False))
        == CONTENT_TYPE_JSON
    )
