"""Hub and agent through a broker that speaks only MQTT 3.1.1 (amqtt): answers come on the default
reply topic and are matched by request id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.amqtt_broker import AmqttBroker, amqtt_command
from tests.support.fallback import AgentProcess, fallback_repository, start_mqtt_hub
from tests.support.hub import HubProcess
from tests.support.models import (
    DIGITS_INPUT,
    DIGITS_OUTPUT,
    DigitsModels,
    ensure_digits_models,
    require,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def broker311(tmp_path: Path) -> Iterator[AmqttBroker]:
    if amqtt_command() is None:
        pytest.fail("amqtt is not installed: it comes with the dev extra")
    broker = AmqttBroker(workdir=tmp_path)
    broker.start()
    yield broker
    broker.stop()


def test_fallback_through_an_mqtt311_only_broker(broker311: AmqttBroker, tmp_path: Path) -> None:
    digits: DigitsModels = require(ensure_digits_models)
    repository = fallback_repository(tmp_path / "repo", digits)
    hub: HubProcess = start_mqtt_hub(
        repository, tmp_path / "hub", broker311, protocol="3.1.1", shared=False
    )
    agent = AgentProcess(
        workdir=tmp_path / "agent",
        config={
            "device_id": "cam-311",
            "models": [
                {
                    "name": "digits",
                    "path": str(digits.model("fp32")),
                    "fallback": {"policy": "always", "cloud_model": "cloud_digits"},
                }
            ],
            "cloud": {"broker": broker311.address, "protocol": "3.1.1", "retry_interval_s": 0.5},
        },
    )
    try:
        agent.start()
        x, _ = digits.data()
        expected = digits.reference("fp32")
        with agent.client() as client:
            for i in range(20):
                result: Any = client.infer(
                    "digits", {DIGITS_INPUT: x[i : i + 1]}, request_id=f"r{i}"
                )
                assert result.id == f"r{i}"
                assert result.parameters["served_by"] == "cloud"
                assert result.parameters["fallback_reason"] == "always"
                np.testing.assert_allclose(
                    result.outputs[DIGITS_OUTPUT], expected[i : i + 1], rtol=1e-5, atol=1e-6
                )
    finally:
        agent.stop()
        hub.stop()
