"""The binary form interoperates with the official Triton client's own encoders and decoders."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as triton_http
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.utils import deserialize_bytes_tensor as triton_deserialize_bytes
from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

from protocols import (
    Datatype,
    decode_request,
    deserialize_bytes_tensor,
    encode_response,
    serialize_bytes_tensor,
)

from .strategies import assert_same, tensors


def _utf8_only(array: np.ndarray) -> np.ndarray:
    """tritonclient's JSON form carries only UTF-8 text; replace what is not."""
    out = np.empty(array.shape, dtype=object)
    for index, element in np.ndenumerate(array):
        out[index] = element.decode("utf-8", "replace").encode("utf-8")
    return out


@settings(max_examples=60, deadline=None)
@given(array=tensors(Datatype.BYTES))
def test_bytes_serialization_matches_tritonclient(array: np.ndarray) -> None:
    theirs = serialize_byte_tensor(array)
    ours = serialize_bytes_tensor(array)
    theirs_raw = theirs.item() if theirs.size else b""
    assert ours == theirs_raw
    assert deserialize_bytes_tensor(theirs_raw, array.size).tolist() == array.reshape(-1).tolist()
    if array.size:
        assert triton_deserialize_bytes(ours).tolist() == array.reshape(-1).tolist()


@settings(max_examples=30, deadline=None)
@given(data=st.data(), binary=st.booleans())
@pytest.mark.parametrize("datatype", list(Datatype), ids=lambda d: d.value)
def test_decodes_tritonclient_request_bodies(
    datatype: Datatype, data: st.DataObject, binary: bool
) -> None:
    array = data.draw(tensors(datatype))
    if not binary and datatype is Datatype.BF16:
        binary = True  # tritonclient sends BF16 only as binary
    if not binary and datatype is Datatype.BYTES:
        array = _utf8_only(array)
    if datatype is Datatype.BF16:
        array = array.astype(ml_dtypes.bfloat16)
    triton_type = "BF16" if datatype is Datatype.BF16 else np_to_triton_dtype(array.dtype)
    assert triton_type == datatype.value
    tin = triton_http.InferInput("x", list(array.shape), triton_type)
    tin.set_data_from_numpy(array, binary_data=binary)
    outputs = [triton_http.InferRequestedOutput("y", binary_data=True)]
    body, json_size = triton_http.InferenceServerClient.generate_request_body(
        [tin], outputs=outputs, request_id="abc"
    )
    decoded = decode_request(body, json_size)
    assert decoded.request.id == "abc"
    assert decoded.request.inputs[0].datatype is datatype
    assert_same(array, decoded.tensors["x"])


@settings(max_examples=30, deadline=None)
@given(data=st.data(), binary=st.booleans())
@pytest.mark.parametrize("datatype", list(Datatype), ids=lambda d: d.value)
def test_tritonclient_reads_our_responses(
    datatype: Datatype, data: st.DataObject, binary: bool
) -> None:
    array = data.draw(tensors(datatype))
    if not binary and datatype is Datatype.BF16:
        binary = True
    if not binary and datatype is Datatype.BYTES:
        array = _utf8_only(array)
    body = encode_response({"y": array}, model_name="m", id="abc", binary=binary)
    result = triton_http.InferResult.from_response_body(
        body.to_bytes(), header_length=body.header_length
    )
    got = result.as_numpy("y")
    assert result.get_response()["id"] == "abc"
    if datatype is Datatype.BYTES:
        # tritonclient hands JSON BYTES back as str, binary BYTES as bytes.
        got_bytes = [e.encode() if isinstance(e, str) else e for e in got.reshape(-1).tolist()]
        assert got_bytes == array.reshape(-1).tolist()
        assert got.shape == array.shape
    else:
        assert_same(array, got.astype(array.dtype))


def test_json_shape_is_what_triton_sends() -> None:
    tin = triton_http.InferInput("x", [2, 2], "FP32")
    tin.set_data_from_numpy(np.eye(2, dtype=np.float32), binary_data=False)
    body, json_size = triton_http.InferenceServerClient.generate_request_body([tin])
    assert json_size is None
    assert json.loads(body)["inputs"][0]["data"] == [1.0, 0.0, 0.0, 1.0]
    assert decode_request(body).tensors["x"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
