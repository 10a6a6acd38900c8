from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import (
    DeviceIdError,
    Topic,
    TopicError,
    TopicKind,
    fleet_models_topic,
    infer_request_topic,
    infer_response_topic,
    parse_topic,
    shared_request_subscription,
    status_topic,
    telemetry_topic,
    validate_device_id,
)


def test_topic_builders() -> None:
    assert infer_request_topic("cam-01") == "hybrid/v1/cam-01/infer/request"
    assert infer_response_topic("cam-01") == "hybrid/v1/cam-01/infer/response"
    assert status_topic("cam-01") == "hybrid/v1/cam-01/status"
    assert telemetry_topic("cam-01") == "hybrid/v1/cam-01/telemetry"
    assert fleet_models_topic("rpi4") == "hybrid/v1/fleet/rpi4/models"
    assert shared_request_subscription() == "$share/hybrid-hub/hybrid/v1/+/infer/request"
    assert shared_request_subscription("gpu") == "$share/gpu/hybrid/v1/+/infer/request"


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("hybrid/v1/cam-01/infer/request", Topic(kind=TopicKind.INFER_REQUEST, device_id="cam-01")),
        (
            "hybrid/v1/cam-01/infer/response",
            Topic(kind=TopicKind.INFER_RESPONSE, device_id="cam-01"),
        ),
        ("hybrid/v1/cam-01/status", Topic(kind=TopicKind.STATUS, device_id="cam-01")),
        ("hybrid/v1/cam-01/telemetry", Topic(kind=TopicKind.TELEMETRY, device_id="cam-01")),
        ("hybrid/v1/fleet/rpi4/models", Topic(kind=TopicKind.FLEET_MODELS, device_class="rpi4")),
    ],
)
def test_parse_topic(topic: str, expected: Topic) -> None:
    assert parse_topic(topic) == expected
    assert str(expected) == topic


@given(st.text(min_size=1, max_size=64).filter(lambda s: validate_ok(s)))
def test_valid_ids_round_trip_through_topics(device_id: str) -> None:
    assert parse_topic(status_topic(device_id)).device_id == device_id
    assert parse_topic(infer_request_topic(device_id)).device_id == device_id


def validate_ok(value: str) -> bool:
    try:
        validate_device_id(value)
    except DeviceIdError:
        return False
    return True


@pytest.mark.parametrize(
    ("device_id", "fragment"),
    [
        ("", "device id is empty"),
        ("x" * 65, "device id is 65 characters; the limit is 64"),
        ("cam+1", "contains '+' at position 3"),
        ("cam#", "contains '#' at position 3"),
        ("a/b", "contains '/' at position 1"),
        ("a\x00b", "control character U+0000 at position 1"),
        ("a\nb", "control character U+000A at position 1"),
        ("a\x7fb", "control character U+007F at position 1"),
        ("a\x85b", "control character U+0085 at position 1"),
        ("fleet", "'fleet' is reserved"),
        (42, "device id must be a string, got int"),
    ],
)
def test_device_id_rules(device_id: object, fragment: str) -> None:
    with pytest.raises(DeviceIdError) as info:
        validate_device_id(device_id)
    assert fragment in str(info.value)
    with pytest.raises(DeviceIdError):
        status_topic(device_id)  # type: ignore[arg-type]


def test_device_id_of_64_characters_is_fine() -> None:
    assert validate_device_id("é" * 64) == "é" * 64


def test_device_class_rules() -> None:
    with pytest.raises(DeviceIdError, match="device class is empty"):
        fleet_models_topic("")
    with pytest.raises(DeviceIdError, match="share group"):
        shared_request_subscription("a+b")


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/cam/status",
        "hybrid/v2/cam/status",
        "hybrid/v1/cam/infer",
        "hybrid/v1/cam/infer/request/extra",
        "hybrid/v1/fleet/rpi4/status",
        "$share/g/hybrid/v1/+/infer/request",
    ],
)
def test_topics_outside_v1_are_rejected(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


def test_wildcard_in_a_received_topic_is_a_device_id_error() -> None:
    with pytest.raises(DeviceIdError, match=r"contains '\+'"):
        parse_topic("hybrid/v1/+/infer/request")
