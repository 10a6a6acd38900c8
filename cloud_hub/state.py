"""What one hub process holds while it runs, built once by :func:`cloud_hub.app.create_app`.

The route groups, the inference path and the lifespan all read it; only the lifespan changes
it (``ready``, ``bridge``, ``grpc``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .access import Access
from .artifacts import ArtifactStore
from .capture import Capture
from .fleet import FleetView
from .metrics import HubMetrics
from .releases import ReleaseStore
from .repository import ModelRepository
from .service import InferenceService
from .settings import HubSettings
from .store import ObjectStore

if TYPE_CHECKING:
    from .mqtt_bridge import MqttBridge

__all__ = ["HubState", "Listener"]


class Listener(Protocol):
    """A listener the lifespan stops (the gRPC one; it reads this state, so it is not named)."""

    async def stop(self, grace_s: float) -> None: ...


@dataclass(eq=False, kw_only=True)
class HubState:
    settings: HubSettings
    metrics: HubMetrics
    access: Access
    repository: ModelRepository
    service: InferenceService
    fleet: FleetView
    objects: ObjectStore
    """The store every replica shares (a folder or an S3 bucket)."""
    artifacts: ArtifactStore
    releases: ReleaseStore
    capture: Capture
    """Opt-in capture of fallback requests (a model without ``capture:`` keeps nothing)."""
    ready: bool = False
    """True between loading the repository at start and the first step of shutdown."""
    bridge: MqttBridge | None = None
    """The MQTT bridge, while it runs (``settings.mqtt`` set)."""
    grpc: Listener | None = None
    """The gRPC listener (:mod:`cloud_hub.grpc`), while it runs (``settings.grpc_port`` set, in
    ``cloud-hub serve``)."""
