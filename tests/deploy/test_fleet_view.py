"""The fleet view on its own: what it records, refuses and forgets, and the gauge it keeps."""

from __future__ import annotations

import json

from prometheus_client import generate_latest

from cloud_hub.fleet import STATUS_SUBSCRIPTION, FleetView
from cloud_hub.metrics import HubMetrics
from protocols import DeviceState, status_topic


def _status(device_id: str, state: str, **extra: object) -> bytes:
    return json.dumps({"device_id": device_id, "state": state, **extra}).encode()


def _gauge(metrics: HubMetrics, state: str) -> float:
    value = metrics.registry.get_sample_value("hub_devices", {"state": state})
    assert value is not None
    return value


def test_statuses_are_recorded_replaced_and_cleared() -> None:
    metrics = HubMetrics()
    fleet = FleetView(metrics, clock=lambda: 1234.5)
    assert _gauge(metrics, "online") == 0
    assert _gauge(metrics, "offline") == 0
    assert fleet.update(status_topic("cam-1"), _status("cam-1", "online", models=["digits"]))
    assert fleet.update(status_topic("cam-2"), _status("cam-2", "online"))
    assert fleet.update(status_topic("cam-2"), _status("cam-2", "offline"))
    assert [r.status.device_id for r in fleet.devices()] == ["cam-1", "cam-2"]
    assert [r.status.device_id for r in fleet.devices(DeviceState.OFFLINE)] == ["cam-2"]
    assert fleet.counts() == {"online": 1, "offline": 1}
    assert (_gauge(metrics, "online"), _gauge(metrics, "offline")) == (1, 1)
    record = fleet.devices(DeviceState.ONLINE)[0].as_json()
    assert record["models"] == ["digits"]
    assert record["received_at_s"] == 1234.5

    assert fleet.update(status_topic("cam-2"), b"")  # the retained status was cleared
    assert fleet.counts() == {"online": 1, "offline": 0}
    assert _gauge(metrics, "offline") == 0


def test_forged_malformed_and_foreign_messages_change_nothing() -> None:
    metrics = HubMetrics()
    fleet = FleetView(metrics)
    fleet.update(status_topic("cam-1"), _status("cam-1", "online"))
    for topic, payload in [
        (status_topic("cam-2"), _status("cam-1", "offline")),  # names another device
        (status_topic("cam-2"), b"{not json"),
        (status_topic("cam-2"), _status("cam-2", "sleeping")),
        (status_topic("cam-2"), _status("cam/2", "online")),
        ("hybrid/v1/cam-2/telemetry", _status("cam-2", "online")),
        ("elsewhere/cam-2/status", _status("cam-2", "online")),
    ]:
        assert not fleet.update(topic, payload), (topic, payload)
    assert fleet.counts() == {"online": 1, "offline": 0}
    malformed = metrics.registry.get_sample_value(
        "hub_device_status_messages_total", {"outcome": "malformed"}
    )
    assert malformed == 6
    assert b'hub_devices{state="online"} 1.0' in generate_latest(metrics.registry)
    assert STATUS_SUBSCRIPTION == "hybrid/v1/+/status"
