from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.broker import Broker

if TYPE_CHECKING:
    from tests.support.hub import HubProcess

# The arm64 lane's tests need its emulated userland: scripts/arm64/lane.sh (make test-arm64).
collect_ignore = [] if os.environ.get("HYBRID_ARM64_USERLAND") else ["arm64"]


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[[], Broker]]:
    """Factory of started Mosquitto brokers, each stopped at the end of the test."""
    brokers: list[Broker] = []

    def make() -> Broker:
        workdir = tmp_path / f"broker{len(brokers)}"
        workdir.mkdir()
        broker = Broker(workdir=workdir)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(make_broker: Callable[[], Broker]) -> Broker:
    return make_broker()


@pytest.fixture
def hubs(repository: Path, tmp_path: Path) -> Iterator[Callable[[Broker], HubProcess]]:
    """Factory of hubs serving the module's ``repository``, each with its MQTT bridge connected
    to the given broker; every one is stopped at the end of the test."""
    # Imported here: the light edge venv runs these tests without ONNX or the hub.
    from tests.support.fallback import start_mqtt_hub

    started: list[HubProcess] = []

    def start(broker: Broker) -> HubProcess:
        hub = start_mqtt_hub(repository, tmp_path / f"hub{len(started)}", broker)
        started.append(hub)
        return hub

    yield start
    for hub in started:
        hub.stop()
