"""The MQTT error reply: ``{"id", "error", "status"}``."""

from __future__ import annotations

import json

import pytest

from protocols import ProtocolError
from protocols.envelope import MqttErrorResponse, decode_mqtt_response, encode_mqtt_error


def test_status_travels_with_the_error() -> None:
    payload = encode_mqtt_error("no model named 'x'", id="r-1", status=404)
    assert json.loads(payload) == {"error": "no model named 'x'", "id": "r-1", "status": 404}
    decoded = decode_mqtt_response(payload)
    assert isinstance(decoded, MqttErrorResponse)
    assert (decoded.id, decoded.status, decoded.error) == ("r-1", 404, "no model named 'x'")


def test_status_is_optional() -> None:
    decoded = decode_mqtt_response(encode_mqtt_error("bad"))
    assert isinstance(decoded, MqttErrorResponse)
    assert decoded.status is None
    assert b"status" not in encode_mqtt_error("bad")


@pytest.mark.parametrize("status", [200, 399, 600, "404", True])
def test_a_status_outside_the_error_range_is_refused(status: object) -> None:
    payload = json.dumps({"error": "x", "status": status}).encode()
    with pytest.raises(ProtocolError):
        decode_mqtt_response(payload)
