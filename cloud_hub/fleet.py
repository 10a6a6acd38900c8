"""The fleet as the broker last saw it: every device's retained status, for ``GET /v1/fleet`` and
the ``hub_devices{state}`` gauge that alerts on devices going offline.

Agents publish ``hybrid/v1/{device_id}/status`` retained (``protocols.DeviceStatus``) when they
connect and stop, and their Last Will turns it ``offline`` when they vanish. The MQTT bridge
subscribes to those topics without sharing (each replica sees the whole fleet; the broker sends
the retained statuses on every connect) and hands each message here. A status whose payload
names another device than its topic is refused and counted, as is anything that does not parse;
an empty retained payload clears the device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from protocols import DeviceState, DeviceStatus, ProtocolError, TopicKind, parse_topic
from protocols.topics import TOPIC_PREFIX

from .access import Access
from .artifacts import scope_check
from .metrics import HubMetrics

__all__ = ["STATUS_SUBSCRIPTION", "DeviceRecord", "FleetView", "router"]

logger = logging.getLogger(__name__)

STATUS_SUBSCRIPTION = f"{TOPIC_PREFIX}/+/{TopicKind.STATUS.value}"
"""Every device's retained status; not shared, so every hub replica holds the whole fleet."""


@dataclass(frozen=True, kw_only=True)
class DeviceRecord:
    """A device's last status and when this hub received it."""

    status: DeviceStatus
    received_at_s: float
    """Unix time the hub received the status (retained ones arrive again on every connect)."""

    def as_json(self) -> dict[str, Any]:
        return {
            **self.status.model_dump(mode="json"),
            "received_at_s": self.received_at_s,
        }


class FleetMetrics:
    def __init__(self, metrics: HubMetrics) -> None:
        r = metrics.registry
        self.devices = Gauge(
            "hub_devices",
            "Devices by the state of their retained status (online, offline); every replica "
            "sees the whole fleet, so aggregate with max, not sum",
            ["state"],
            registry=r,
        )
        self.messages = Counter(
            "hub_device_status_messages",
            "Device status messages by outcome: accepted, cleared, malformed",
            ["outcome"],
            registry=r,
        )
        for state in DeviceState:
            self.devices.labels(state=state.value).set(0)
        for outcome in ("accepted", "cleared", "malformed"):
            self.messages.labels(outcome=outcome)


class FleetView:
    """Thread-safe: the bridge calls :meth:`update` on paho's thread, HTTP reads on the loop."""

    def __init__(self, metrics: HubMetrics, *, clock: Any = time.time) -> None:
        self._metrics = FleetMetrics(metrics)
        self._devices: dict[str, DeviceRecord] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def update(self, topic: str, payload: bytes) -> bool:
        """Record a status message; ``False`` (and counted as malformed) when it is refused."""
        try:
            parsed = parse_topic(topic)
            if parsed.kind is not TopicKind.STATUS or parsed.device_id is None:
                raise ValueError(f"{topic!r} is not a status topic")
            device_id = parsed.device_id
            if not payload:
                with self._lock:
                    self._devices.pop(device_id, None)
                    self._publish_counts()
                self._metrics.messages.labels(outcome="cleared").inc()
                return True
            status = DeviceStatus.model_validate_json(payload)
            if status.device_id != device_id:
                raise ValueError(
                    f"status on {topic!r} names device {status.device_id!r}, not {device_id!r}"
                )
        except (ProtocolError, ValidationError, ValueError) as exc:
            self._metrics.messages.labels(outcome="malformed").inc()
            logger.warning("ignored a device status on %r: %s", topic, _first_line(exc))
            return False
        record = DeviceRecord(status=status, received_at_s=self._clock())
        with self._lock:
            self._devices[device_id] = record
            self._publish_counts()
        self._metrics.messages.labels(outcome="accepted").inc()
        return True

    def devices(self, state: DeviceState | None = None) -> list[DeviceRecord]:
        with self._lock:
            records = sorted(self._devices.values(), key=lambda r: r.status.device_id)
        return [r for r in records if state is None or r.status.state is state]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return self._counts()

    def _counts(self) -> dict[str, int]:
        tally = Tally(r.status.state.value for r in self._devices.values())
        return {state.value: tally.get(state.value, 0) for state in DeviceState}

    def _publish_counts(self) -> None:
        """Under the lock, so two updates cannot publish their counts out of order."""
        for state, count in self._counts().items():
            self._metrics.devices.labels(state=state).set(count)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def router(fleet: FleetView, access: Access) -> APIRouter:
    """``GET /v1/fleet``: every device's last status, optionally of one state (admin scope:
    it lists the fleet)."""
    api = APIRouter()

    @api.get("/v1/fleet", dependencies=[Depends(scope_check(access, "admin"))])
    def list_fleet(state: DeviceState | None = None) -> dict[str, Any]:
        return {
            "devices": [r.as_json() for r in fleet.devices(state)],
            "counts": fleet.counts(),
        }

    return api
