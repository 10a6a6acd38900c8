from __future__ import annotations

import pytest

from protocols import DeviceIdError, DeviceState, DeviceStatus, MessageError, Telemetry
from protocols.codec import validate_message


def test_status_round_trip() -> None:
    status = DeviceStatus(
        device_id="cam-01", state=DeviceState.ONLINE, runtime="ai_edge_litert", models=["digits"]
    )
    again = validate_message(DeviceStatus, status.model_dump_json().encode())
    assert again == status


def test_status_rejects_bad_device_id() -> None:
    with pytest.raises(DeviceIdError, match="contains '/'"):
        validate_message(DeviceStatus, b'{"device_id": "a/b", "state": "online"}')


def test_status_rejects_unknown_state() -> None:
    with pytest.raises(MessageError, match="state: Input should be 'online' or 'offline'"):
        validate_message(DeviceStatus, b'{"device_id": "a", "state": "sleeping"}')


def test_telemetry() -> None:
    t = validate_message(
        Telemetry, b'{"device_id": "a", "counters": {"requests": 3}, "interval_s": 10}'
    )
    assert t.counters == {"requests": 3.0}
