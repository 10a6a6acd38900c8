from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_agent import errors
from edge_agent.config import ModelConfig
from edge_agent.errors import InputError, ModelNotFoundError, ModelNotReadyError
from edge_agent.metrics import AgentMetrics
from edge_agent.registry import ModelRegistry, ModelState
from edge_agent.router import RoutedResult, Router, ServedBy
from edge_agent.runtime import RuntimeInfo
from tests.support.models import DIGITS_INPUT, DIGITS_OUTPUT, DigitsModels


@pytest.fixture
def setup(
    runtime: RuntimeInfo, digits: DigitsModels, tmp_path: Path
) -> tuple[Router, AgentMetrics, ModelRegistry]:
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a model")
    registry = ModelRegistry(
        [
            ModelConfig(name="fp32", path=digits.model("fp32")),
            ModelConfig(name="int8", path=digits.model("int8"), version="2"),
            ModelConfig(name="broken", path=broken),
        ]
    )
    registry.load_all(runtime)
    metrics = AgentMetrics()
    return Router(registry, metrics), metrics, registry


def _value(metrics: AgentMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_answers_carry_served_by_edge(setup: tuple[Router, AgentMetrics, ModelRegistry]) -> None:
    router, metrics, _ = setup
    x = np.zeros((2, 64), np.float32)
    result = router.infer("int8", {DIGITS_INPUT: x}, version="2")
    assert result.served_by is ServedBy.EDGE
    assert result.parameters == {"served_by": "edge"}
    assert result.fallback_reason is None
    assert (result.model_name, result.model_version) == ("int8", "2")
    assert result.outputs[DIGITS_OUTPUT].shape == (2, 10)
    assert _value(metrics, "edge_agent_requests_total", model="int8", served_by="edge") == 1
    assert (
        _value(metrics, "edge_agent_inference_seconds_count", model="int8", served_by="edge") == 1
    )


def test_a_cloud_answer_names_its_reason() -> None:
    result = RoutedResult(
        model_name="m",
        model_version="1",
        outputs={},
        served_by=ServedBy.CLOUD,
        batched=True,
        fallback_reason="low_confidence",
    )
    assert result.parameters == {"served_by": "cloud", "fallback_reason": "low_confidence"}


@pytest.mark.parametrize(
    ("model", "version", "inputs", "error", "kind", "label"),
    [
        ("nope", None, {}, ModelNotFoundError, "not_found", "_unknown"),
        ("int8", "1", {}, ModelNotFoundError, "not_found", "int8"),
        ("broken", None, {}, ModelNotReadyError, "not_ready", "broken"),
        (
            "fp32",
            None,
            {DIGITS_INPUT: np.zeros((1, 3), np.float32)},
            InputError,
            "bad_input",
            "fp32",
        ),
    ],
)
def test_errors_are_raised_and_counted(
    setup: tuple[Router, AgentMetrics, ModelRegistry],
    model: str,
    version: str | None,
    inputs: dict[str, np.ndarray],
    error: type[Exception],
    kind: str,
    label: str,
) -> None:
    router, metrics, _ = setup
    with pytest.raises(error):
        router.infer(model, inputs, version=version)
    assert _value(metrics, "edge_agent_request_errors_total", model=label, error=kind) == 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (errors.ModelNotFoundError, "not_found"),
        (errors.ModelNotReadyError, "not_ready"),
        (errors.CloudUnavailableError, "cloud_unavailable"),
        (errors.OutboxFullError, "outbox_full"),
        (errors.UnavailableError, "unavailable"),
        (errors.InputError, "bad_input"),
        (errors.CloudTimeoutError, "cloud_timeout"),
        (errors.CloudRequestError, "cloud_error"),
        (errors.InferenceError, "inference"),
        (errors.ModelLoadError, "inference"),
        (errors.AgentError, "inference"),
    ],
)
def test_each_error_declares_the_label_it_is_counted_under(
    error: type[errors.AgentError], kind: str
) -> None:
    assert error.kind == kind
    assert error("x").kind == kind


def test_registry_keeps_the_reason_of_a_failed_load(
    setup: tuple[Router, AgentMetrics, ModelRegistry],
) -> None:
    _, _, registry = setup
    status = registry.status("broken")
    assert status is not None
    assert status.state is ModelState.FAILED
    assert status.error is not None
    assert "broken.tflite" in status.error
    assert not status.error.startswith("model 'broken'")
    with pytest.raises(
        ModelNotReadyError, match=r"model 'broken' failed to load: .*broken\.tflite"
    ):
        registry.get("broken")


def test_a_registry_without_runtime_fails_every_model(digits: DigitsModels) -> None:
    registry = ModelRegistry([ModelConfig(name="m", path=digits.model("fp32"))])
    registry.load_all(None, runtime_error="no TFLite interpreter can be imported")
    with pytest.raises(ModelNotReadyError, match="no TFLite interpreter"):
        registry.get("m")


def test_models_still_loading_are_not_ready(digits: DigitsModels) -> None:
    registry = ModelRegistry([ModelConfig(name="m", path=digits.model("fp32"))])
    with pytest.raises(ModelNotReadyError, match="still loading"):
        registry.get("m")


def test_router_serves_in_process_from_an_agent(make_agent: Callable[..., object]) -> None:
    from edge_agent.agent import Agent

    agent = make_agent()
    assert isinstance(agent, Agent)
    result = agent.router.infer("digits_fp16", {DIGITS_INPUT: np.ones((3, 64), np.float32)})
    assert result.outputs[DIGITS_OUTPUT].shape == (3, 10)
