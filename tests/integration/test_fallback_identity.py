"""Request identity and transient cloud errors through real processes: Mosquitto, ``cloud-hub
serve`` with its MQTT bridge, and ``edge-agent run``, called over the agent's local HTTP API.

Apps reuse ids (two apps counting from the same number, an app whose counter restarted across an
agent restart): each still gets the answer computed for its own inputs, as every cloud call
travels under the agent's own wire id. A hub that turns requests away for a while (its
per-device rate limit: 429 with ``retry_after_s``, the transient error a real hub sends on
demand) never ends a queued request with that error: it is retried until the model answers it;
under ``local`` the app gets the local answer, marked degraded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import QueuedError
from tests.support.broker import Broker
from tests.support.fallback import agent_starter, fallback_repository, start_mqtt_hub
from tests.support.models import (
    DIGITS_INPUT,
    DIGITS_OUTPUT,
    DigitsModels,
    ensure_digits_models,
    require,
)

pytestmark = pytest.mark.integration

DEVICE = "identity-device"


@pytest.fixture(scope="module")
def digits() -> DigitsModels:
    return require(ensure_digits_models)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def repository(digits: DigitsModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fallback_repository(tmp_path_factory.mktemp("repo"), digits)


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Any]:
    with agent_starter(tmp_path) as make:
        yield make


def _model(digits: DigitsModels, name: str, unavailable: str, deadline_s: float) -> dict[str, Any]:
    return {
        "name": name,
        "path": str(digits.model("int8")),
        "fallback": {
            "policy": "always",
            "cloud_model": "cloud_digits",
            "deadline_s": deadline_s,
            "on_cloud_unavailable": unavailable,
        },
    }


def _config(digits: DigitsModels, broker: Broker, deadline_s: float = 5.0) -> dict[str, Any]:
    return {
        "device_id": DEVICE,
        "models": [
            _model(digits, "m_local", "local", deadline_s),
            _model(digits, "m_queue", "queue", deadline_s),
        ],
        "cloud": {"broker": broker.address, "retry_interval_s": 0.3, "reconnect_min_s": 0.05},
    }


def test_reused_ids_get_their_own_answers_across_apps_and_an_agent_restart(
    digits: DigitsModels, broker: Broker, repository: Path, tmp_path: Path, make_agent: Any
) -> None:
    hub = start_mqtt_hub(repository, tmp_path / "hub", broker)
    try:
        agent = make_agent(_config(digits, broker))
        x, _ = digits.data()
        reference = digits.reference("fp32")
        top = reference.argmax(axis=1)
        # Inputs whose cloud classes differ, so a swapped answer cannot pass.
        picks = [int(np.flatnonzero(top == c)[0]) for c in (1, 2, 3, 4)]
        with agent.client() as app_a, agent.client() as app_b:
            for n, (i, j) in enumerate(((picks[0], picks[1]), (picks[2], picks[3]))):
                request_id = f"r{n}"  # both apps count from r0
                a = app_a.infer("m_local", {DIGITS_INPUT: x[i : i + 1]}, request_id=request_id)
                b = app_b.infer("m_local", {DIGITS_INPUT: x[j : j + 1]}, request_id=request_id)
                assert (a.served_by, b.served_by) == ("cloud", "cloud")
                assert (a.id, b.id) == (request_id, request_id)  # the app's id comes back
                np.testing.assert_allclose(
                    a.outputs[DIGITS_OUTPUT], reference[i : i + 1], rtol=1e-5, atol=1e-6
                )
                np.testing.assert_allclose(
                    b.outputs[DIGITS_OUTPUT], reference[j : j + 1], rtol=1e-5, atol=1e-6
                )
            queued = app_a.infer(
                "m_queue", {DIGITS_INPUT: x[picks[0] : picks[0] + 1]}, request_id="q0"
            )
            np.testing.assert_allclose(
                queued.outputs[DIGITS_OUTPUT], reference[picks[0] : picks[0] + 1], rtol=1e-5
            )
            # Answered at once, so not queued: the same id for other inputs is a new request.
            second = app_b.infer(
                "m_queue", {DIGITS_INPUT: x[picks[1] : picks[1] + 1]}, request_id="q0"
            )
            np.testing.assert_allclose(
                second.outputs[DIGITS_OUTPUT], reference[picks[1] : picks[1] + 1], rtol=1e-5
            )

        agent.kill()
        agent.start()  # the app's counter restarts with the agent
        with agent.client() as app:
            for n, i in enumerate((picks[3], picks[2])):
                again = app.infer("m_local", {DIGITS_INPUT: x[i : i + 1]}, request_id=f"r{n}")
                assert again.served_by == "cloud"
                np.testing.assert_allclose(
                    again.outputs[DIGITS_OUTPUT], reference[i : i + 1], rtol=1e-5, atol=1e-6
                )
    finally:
        hub.stop()


def test_a_hub_turning_requests_away_never_answers_them_with_that_error(
    digits: DigitsModels, broker: Broker, repository: Path, tmp_path: Path, make_agent: Any
) -> None:
    # One request per 0.5 s for this device: most requests first get 429 with retry_after_s.
    hub = start_mqtt_hub(
        repository, tmp_path / "hub", broker, device_rate_per_s=2.0, device_burst=1
    )
    try:
        x, _ = digits.data()
        reference = digits.reference("fp32")
        agent = make_agent(_config(digits, broker, deadline_s=0.2))
        answered: dict[str, int] = {}
        pending: dict[str, int] = {}
        with agent.client() as client:
            degraded = 0
            for i in range(6):
                result = client.infer("m_local", {DIGITS_INPUT: x[i : i + 1]})
                degraded += bool(result.degraded)
                if result.degraded:
                    assert result.parameters["fallback_reason"] == "cloud_unavailable"
            assert degraded >= 1  # turned away within its 0.2 s deadline: the local answer
            for i in range(12):
                request_id = f"busy{i}"
                try:
                    result = client.infer(
                        "m_queue", {DIGITS_INPUT: x[i : i + 1]}, request_id=request_id
                    )
                except QueuedError:
                    pending[request_id] = i
                    continue
                np.testing.assert_allclose(
                    result.outputs[DIGITS_OUTPUT], reference[i : i + 1], rtol=1e-5, atol=1e-6
                )
                answered[request_id] = i
            assert pending  # some were turned away and queued
            for request_id, i in pending.items():
                answer = client.wait_result(request_id, timeout_s=60)
                assert answer.id == request_id
                assert answer.parameters["served_by"] == "cloud"
                np.testing.assert_allclose(
                    answer.outputs[DIGITS_OUTPUT], reference[i : i + 1], rtol=1e-5, atol=1e-6
                )
        assert agent.metric('edge_agent_cloud_requests_total{outcome="busy"}') >= 1
        assert agent.metric('edge_agent_outbox_depth{kind="dead"}') == 0
    finally:
        hub.stop()
