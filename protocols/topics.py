"""MQTT topics, version 1, and the rules for the device ids and classes inside them.

    hybrid/v1/{device_id}/infer/request     edge -> hub
    hybrid/v1/{device_id}/infer/response    hub -> edge (the default reply topic)
    hybrid/v1/{device_id}/status            retained; the agent's Last Will sets it offline
    hybrid/v1/{device_id}/telemetry         periodic counters
    hybrid/v1/fleet/{device_class}/models   retained, signed model announcements

Hubs subscribe with :func:`shared_request_subscription` so that replicas share the load.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass

from .errors import DeviceIdError, TopicError

__all__ = [
    "DEVICE_ID_MAX_CHARS",
    "FLEET",
    "HUB_STATUS_SUBSCRIPTION",
    "TOPIC_PREFIX",
    "Topic",
    "TopicKind",
    "fleet_models_topic",
    "hub_id_of",
    "hub_status_topic",
    "infer_request_topic",
    "infer_response_topic",
    "parse_topic",
    "request_subscription",
    "shared_request_subscription",
    "status_topic",
    "telemetry_topic",
    "validate_device_id",
]

TOPIC_PREFIX = "hybrid/v1"
FLEET = "fleet"
DEVICE_ID_MAX_CHARS = 64
DEFAULT_SHARE_GROUP = "hybrid-hub"
HUB_STATUS_SUBSCRIPTION = f"{TOPIC_PREFIX}/{FLEET}/hubs/+/status"
"""Every hub's retained status (``online``; its Last Will sets ``offline``): agents subscribe to
learn at once that the cloud went away or came back."""


class TopicKind(str, enum.Enum):
    INFER_REQUEST = "infer/request"
    INFER_RESPONSE = "infer/response"
    STATUS = "status"
    TELEMETRY = "telemetry"
    FLEET_MODELS = "models"


@dataclass(frozen=True, kw_only=True)
class Topic:
    """A parsed topic: its family and the device id, or device class for fleet topics."""

    kind: TopicKind
    device_id: str | None = None
    device_class: str | None = None

    def __str__(self) -> str:
        if self.kind is TopicKind.FLEET_MODELS:
            return fleet_models_topic(self.device_class or "")
        return _device_topic(self.device_id or "", self.kind)


def validate_device_id(value: object, *, what: str = "device id") -> str:
    """Return ``value`` if it may stand as one topic level, else raise :class:`DeviceIdError`.

    Rejected: non-strings, empty, over 64 characters, the MQTT wildcards ``+`` and ``#``, the
    level separator ``/``, NUL and every other control character. ``fleet`` is reserved.
    """
    if not isinstance(value, str):
        raise DeviceIdError(f"{what} must be a string, got {type(value).__name__}", location=what)
    if not value:
        raise DeviceIdError(f"{what} is empty", location=what)
    if len(value) > DEVICE_ID_MAX_CHARS:
        raise DeviceIdError(
            f"{what} is {len(value)} characters; the limit is {DEVICE_ID_MAX_CHARS}", location=what
        )
    for index, char in enumerate(value):
        if char in "+#/":
            raise DeviceIdError(
                f"{what} {value!r} contains {char!r} at position {index}; '+', '#' and '/' "
                "are not allowed",
                location=what,
            )
        if unicodedata.category(char) == "Cc":
            raise DeviceIdError(
                f"{what} contains control character U+{ord(char):04X} at position {index}",
                location=what,
            )
    if what == "device id" and value == FLEET:
        raise DeviceIdError(f"{what} {FLEET!r} is reserved for fleet topics", location=what)
    return value


def _device_topic(device_id: str, kind: TopicKind) -> str:
    return f"{TOPIC_PREFIX}/{validate_device_id(device_id)}/{kind.value}"


def infer_request_topic(device_id: str) -> str:
    return _device_topic(device_id, TopicKind.INFER_REQUEST)


def infer_response_topic(device_id: str) -> str:
    return _device_topic(device_id, TopicKind.INFER_RESPONSE)


def status_topic(device_id: str) -> str:
    return _device_topic(device_id, TopicKind.STATUS)


def telemetry_topic(device_id: str) -> str:
    return _device_topic(device_id, TopicKind.TELEMETRY)


def fleet_models_topic(device_class: str) -> str:
    validate_device_id(device_class, what="device class")
    return f"{TOPIC_PREFIX}/{FLEET}/{device_class}/{TopicKind.FLEET_MODELS.value}"


def hub_status_topic(hub_id: str) -> str:
    """``hybrid/v1/fleet/hubs/{hub_id}/status``, ``hub_id`` reduced to ``A-Z a-z 0-9 _ . -``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", hub_id)[:128] or "hub"
    return f"{TOPIC_PREFIX}/{FLEET}/hubs/{safe}/status"


def hub_id_of(topic: str) -> str | None:
    """The hub id of a hub status topic; ``None`` for any other topic."""
    prefix, suffix = f"{TOPIC_PREFIX}/{FLEET}/hubs/", "/status"
    if topic.startswith(prefix) and topic.endswith(suffix):
        hub_id = topic[len(prefix) : -len(suffix)]
        if hub_id and "/" not in hub_id:
            return hub_id
    return None


def request_subscription() -> str:
    """Every device's requests, for a single hub that does not share."""
    return f"{TOPIC_PREFIX}/+/{TopicKind.INFER_REQUEST.value}"


def shared_request_subscription(group: str = DEFAULT_SHARE_GROUP) -> str:
    """``$share/<group>/hybrid/v1/+/infer/request``: hubs in one group split the requests."""
    validate_device_id(group, what="share group")
    return f"$share/{group}/{request_subscription()}"


def parse_topic(topic: str) -> Topic:
    """The family and ids of a v1 topic; :class:`TopicError` for anything else."""
    if not isinstance(topic, str):
        raise TopicError(f"topic must be a string, got {type(topic).__name__}", location="topic")
    prefix = TOPIC_PREFIX + "/"
    if not topic.startswith(prefix):
        raise TopicError(f"topic {topic!r} does not start with {prefix!r}", location="topic")
    levels = topic[len(prefix) :].split("/")
    if len(levels) == 3 and levels[0] == FLEET and levels[2] == TopicKind.FLEET_MODELS.value:
        return Topic(
            kind=TopicKind.FLEET_MODELS,
            device_class=validate_device_id(levels[1], what="device class"),
        )
    suffix = "/".join(levels[1:])
    for kind in TopicKind:
        if kind is not TopicKind.FLEET_MODELS and suffix == kind.value:
            return Topic(kind=kind, device_id=validate_device_id(levels[0]))
    raise TopicError(f"topic {topic!r} is not a v1 topic", location="topic")
