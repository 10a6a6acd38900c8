"""What a request handed to the cloud reports of the device's own answer (docs/protocol.md,
section 2.5): the reason, the local model's top class and confidence per row, its version, and
the device's constant parameters (class, capture opt-out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.cloud.calls import CloudCall, CloudResult, QueuedCall
from edge_agent.config import ModelConfig, RemoteModelConfig
from edge_agent.metrics import AgentMetrics
from edge_agent.registry import ModelRegistry
from edge_agent.reply import ReplyFormat
from edge_agent.router import Router
from edge_agent.runtime import RuntimeInfo
from tests.support.models import DIGITS_INPUT, DIGITS_OUTPUT, DigitsModels


class RecordingCloud:
    """Answers every call with ten equal scores and keeps the calls it was given."""

    def __init__(self) -> None:
        self.calls: list[CloudCall] = []

    def infer(self, call: CloudCall) -> CloudResult:
        self.calls.append(call)
        rows = next(iter(call.inputs.values())).shape[0]
        return CloudResult(
            model_name=call.model,
            model_version="1",
            outputs={DIGITS_OUTPUT: np.full((rows, 10), 0.1, np.float32)},
            parameters={"served_by": "cloud"},
        )

    def enqueue(self, call: CloudCall, reply: ReplyFormat) -> QueuedCall:
        raise AssertionError("not used")

    def lookup(self, request_id: str) -> QueuedCall | None:
        return None


def _router(
    runtime: RuntimeInfo, digits: DigitsModels, policy: str, **device: str | bool
) -> tuple[Router, RecordingCloud, ModelRegistry]:
    registry = ModelRegistry(
        [
            ModelConfig(
                name="digits",
                path=digits.model("fp32"),
                version="3",
                fallback={"policy": policy, "cloud_model": "cloud_digits", "threshold": 1.0},
            )
        ]
    )
    registry.load_all(runtime)
    cloud = RecordingCloud()
    router = Router(
        registry,
        AgentMetrics(),
        cloud,
        remote_models=[RemoteModelConfig(name="remote", cloud_model="cloud_digits")],
        device_parameters=device,
    )
    return router, cloud, registry


@pytest.mark.parametrize("rows", [1, 3])
def test_a_low_confidence_fallback_reports_the_device_answer_per_row(
    runtime: RuntimeInfo, digits: DigitsModels, rows: int
) -> None:
    router, cloud, registry = _router(runtime, digits, "on_low_confidence", device_class="rpi4")
    x, _ = digits.data()
    result = router.infer("digits", {DIGITS_INPUT: x[:rows]})
    assert result.served_by.value == "cloud"
    local = registry.get("digits").infer({DIGITS_INPUT: x[:rows]})[DIGITS_OUTPUT]
    params = cloud.calls[0].parameters
    assert params["fallback_reason"] == "low_confidence"
    assert params["device_class"] == "rpi4"
    assert params["device_model_version"] == "3"
    assert "capture" not in params
    if rows == 1:
        assert params["device_top_class"] == int(local.argmax())
        assert params["device_confidence"] == pytest.approx(float(local.max()))
    else:
        assert params["device_top_class"] == ",".join(str(c) for c in local.argmax(axis=1))
        confidences = [float(c) for c in str(params["device_confidence"]).split(",")]
        np.testing.assert_allclose(confidences, local.max(axis=1), rtol=1e-6)


def test_without_a_local_run_only_the_reason_goes(
    runtime: RuntimeInfo, digits: DigitsModels
) -> None:
    router, cloud, _ = _router(runtime, digits, "always", device_class="rpi4", capture=False)
    x = np.zeros((1, 64), np.float32)
    router.infer("digits", {DIGITS_INPUT: x})
    router.infer("remote", {DIGITS_INPUT: x})
    always, remote = (c.parameters for c in cloud.calls)
    assert always == {
        "fallback_reason": "always",
        "device_class": "rpi4",
        "capture": False,
        "device_model_version": "3",
    }
    assert remote == {"fallback_reason": "missing", "device_class": "rpi4", "capture": False}


def test_an_opted_out_device_marks_its_requests(tmp_path: Path, digits: DigitsModels) -> None:
    from edge_agent.agent import Agent
    from edge_agent.config import AgentConfig

    config = AgentConfig(
        device_id="d1",
        device_class="cam",
        data_dir=tmp_path,
        capture_opt_out=True,
        models=[{"name": "digits", "path": str(digits.model("fp32"))}],
    )
    agent = Agent(config)
    assert agent.router._device_parameters == {"device_class": "cam", "capture": False}
