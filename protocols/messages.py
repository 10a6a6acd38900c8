"""Device status and telemetry: the non-inference messages on a device's topics."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from .topics import validate_device_id

__all__ = ["DeviceState", "DeviceStatus", "HubStatus", "Telemetry"]


class DeviceState(str, enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    """Set by the broker from the agent's Last Will, or by the agent on a clean shutdown."""


class _DeviceMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    device_id: StrictStr
    timestamp_s: float | None = None
    """Unix time the message was made, in seconds."""

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        return validate_device_id(value)


class DeviceStatus(_DeviceMessage):
    """Retained on ``hybrid/v1/{device_id}/status``."""

    state: DeviceState
    device_class: StrictStr | None = None
    agent_version: StrictStr | None = None
    runtime: StrictStr | None = None
    """The interpreter in use: ``ai_edge_litert``, ``tflite_runtime`` or ``tensorflow``."""
    models: list[StrictStr] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)
    """Free-form state, for example the model updater's."""


class Telemetry(_DeviceMessage):
    """Published periodically on ``hybrid/v1/{device_id}/telemetry``."""

    interval_s: float | None = None
    counters: dict[str, float] = Field(default_factory=dict)
    gauges: dict[str, float] = Field(default_factory=dict)


class HubStatus(BaseModel):
    """Retained on ``hybrid/v1/fleet/hubs/{hub_id}/status``: ``online`` on every connect, and
    ``offline`` from the hub's Last Will or on a clean stop."""

    model_config = ConfigDict(extra="ignore")

    hub_id: StrictStr
    state: DeviceState
    timestamp_s: float | None = None
