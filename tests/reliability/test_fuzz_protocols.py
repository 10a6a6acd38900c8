"""Fuzzing the wire decoders with hypothesis: whatever the bytes, only a documented
``ProtocolError`` may come out of them, never another exception, and a decoded message is one
the limits allow.

Three kinds of input: random bytes; well-formed requests and frames (every datatype) mutated
byte by byte, truncated or with a lying header length; and JSON documents shaped like requests
whose fields take arbitrary JSON values. Examples per test: ``sized(300, 20000)``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import (
    DEFAULT_LIMITS,
    Datatype,
    DeviceStatus,
    Limits,
    ProtocolError,
    Telemetry,
    decode_mqtt_request,
    decode_mqtt_response,
    decode_request,
    decode_response,
    encode_mqtt_request,
    encode_request,
    encode_response,
    parse_topic,
)
from protocols.codec import deserialize_bytes_tensor, validate_message
from tests.reliability.conftest import record, sized
from tests.unit.protocols.strategies import tensors

EXAMPLES = sized(300, 20_000)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL = Limits(
    payload_max_bytes=4096,
    header_max_bytes=2048,
    tensor_max_elements=64,
    tensor_max_dims=4,
    bytes_element_max_bytes=32,
    tensors_max=4,
)


TALLY = {"calls": 0, "decoded": 0, "protocol_errors": 0, "other_exceptions": 0}


@pytest.fixture(scope="module", autouse=True)
def tally() -> Iterator[None]:
    """Record how many decoder calls the module made and how they ended."""
    yield
    record("protocol_fuzz", examples_per_test=EXAMPLES, **TALLY)


def decodes_or_protocol_error(decode: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a decoder; a ``ProtocolError`` is a pass (with a message and an HTTP status), any
    other exception fails the test."""
    TALLY["calls"] += 1
    try:
        result = decode(*args, **kwargs)
        TALLY["decoded"] += 1
        return result
    except ProtocolError as exc:
        TALLY["protocol_errors"] += 1
        error = exc
    except Exception:
        TALLY["other_exceptions"] += 1
        raise
    assert str(error)
    assert error.status in (400, 413)
    return None


def assert_within(tensors_out: dict[str, np.ndarray], limits: Limits) -> None:
    assert len(tensors_out) <= limits.tensors_max
    for array in tensors_out.values():
        assert array.size <= limits.tensor_max_elements
        assert array.ndim <= limits.tensor_max_dims


# --- inputs ------------------------------------------------------------------------------------

datatypes = st.sampled_from(list(Datatype))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
shapes = st.one_of(
    st.lists(st.integers(min_value=-2, max_value=9), max_size=5),
    json_values,
)


@st.composite
def request_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON request whose every field may be right, wrong, or of the wrong kind."""

    def tensor() -> dict[str, Any]:
        datatype = draw(st.one_of(datatypes.map(str), st.text(max_size=6)))
        shape = draw(shapes)
        data = draw(
            st.one_of(
                st.lists(json_scalars, max_size=12),
                st.lists(st.lists(json_scalars, max_size=4), max_size=4),
                json_values,
            )
        )
        out: dict[str, Any] = {"name": draw(st.text(min_size=0, max_size=5)), "datatype": datatype}
        if draw(st.booleans()):
            out["shape"] = shape
        if draw(st.booleans()):
            out["data"] = data
        if draw(st.booleans()):
            out["parameters"] = draw(
                st.dictionaries(
                    st.sampled_from(
                        ["binary_data_size", "binary_data", "shared_memory_region", "x"]
                    ),
                    json_values,
                    max_size=2,
                )
            )
        return out

    doc: dict[str, Any] = {"inputs": [tensor() for _ in range(draw(st.integers(0, 3)))]}
    if draw(st.booleans()):
        doc["id"] = draw(json_values)
    if draw(st.booleans()):
        doc["model_name"] = draw(st.one_of(st.text(max_size=8), json_values))
    if draw(st.booleans()):
        doc["outputs"] = draw(json_values)
    if draw(st.booleans()):
        doc["parameters"] = draw(json_values)
    return doc


@st.composite
def encoded_requests(draw: st.DrawFn) -> bytes:
    """A valid binary-extension request with one to three tensors of any datatype."""
    inputs = {f"t{k}": draw(tensors(draw(datatypes))) for k in range(draw(st.integers(1, 3)))}
    return encode_mqtt_request(
        "m", inputs, id="r", binary=draw(st.sampled_from(["auto", True, False]))
    )


@st.composite
def mutated(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> bytes:
    """``source`` with bytes flipped, a piece cut off or inserted, or its header length changed."""
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "length", "delete"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            i = draw(st.integers(0, len(data) - 1))
            del data[i : i + draw(st.integers(1, 8))]
        elif kind == "length" and data[:4] == b"HIB1" and len(data) >= 8:
            struct.pack_into("<I", data, 4, draw(st.integers(0, 2**32 - 1)))
    return bytes(data)


# --- tests -------------------------------------------------------------------------------------


@FUZZ
@given(payload=st.binary(max_size=512))
def test_random_bytes(payload: bytes) -> None:
    for decode in (decode_mqtt_request, decode_mqtt_response):
        decodes_or_protocol_error(decode, payload)
    decodes_or_protocol_error(decode_request, payload)
    decodes_or_protocol_error(decode_response, payload)
    decodes_or_protocol_error(deserialize_bytes_tensor, payload, 3)
    decodes_or_protocol_error(validate_message, DeviceStatus, payload)
    decodes_or_protocol_error(validate_message, Telemetry, payload)


@FUZZ
@given(payload=mutated(encoded_requests()))
def test_mutated_mqtt_frames(payload: bytes) -> None:
    for limits in (DEFAULT_LIMITS, SMALL):
        decoded = decodes_or_protocol_error(decode_mqtt_request, payload, limits=limits)
        if decoded is not None:
            assert_within(decoded.tensors, limits)
        decodes_or_protocol_error(decode_mqtt_response, payload, limits=limits)


@FUZZ
@given(
    inputs=st.dictionaries(
        st.sampled_from(["a", "b", "c"]), datatypes.flatmap(tensors), min_size=1, max_size=3
    ),
    cut=st.integers(0, 64),
    header_length=st.one_of(
        st.none(),
        st.integers(-5, 5000),
        st.text(max_size=6),
        st.just("auto"),
    ),
)
def test_http_bodies_with_lying_header_lengths(
    inputs: dict[str, np.ndarray], cut: int, header_length: Any
) -> None:
    body = encode_request(inputs, binary=True)
    raw = body.to_bytes()
    raw = raw[: len(raw) - cut] if cut else raw
    length = len(body.header) if header_length == "auto" else header_length
    for limits in (DEFAULT_LIMITS, SMALL):
        decoded = decodes_or_protocol_error(decode_request, raw, length, limits=limits)
        if decoded is not None:
            assert_within(decoded.tensors, limits)
        response = encode_response(inputs, model_name="m", binary=True).to_bytes()
        decodes_or_protocol_error(
            decode_response, response[: len(response) - cut], length, limits=limits
        )


@FUZZ
@given(doc=request_documents())
def test_json_requests_with_arbitrary_fields(doc: dict[str, Any]) -> None:
    payload = json.dumps(doc).encode()
    for limits in (DEFAULT_LIMITS, SMALL):
        decoded = decodes_or_protocol_error(decode_request, payload, limits=limits)
        if decoded is not None:
            assert_within(decoded.tensors, limits)
        decodes_or_protocol_error(decode_mqtt_request, payload, limits=limits)
        decodes_or_protocol_error(decode_response, payload, limits=limits)


@FUZZ
@given(
    topic=st.one_of(st.text(max_size=60), st.lists(st.text(max_size=12), max_size=6).map("/".join))
)
def test_topics(topic: str) -> None:
    decodes_or_protocol_error(parse_topic, "hybrid/v1/" + topic)
    decodes_or_protocol_error(parse_topic, topic)
