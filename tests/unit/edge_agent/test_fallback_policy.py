"""The router's fallback policies, with the cloud played by a real digits model in process.

The MQTT link, breaker and outbox are tested on their own and, end to end through a real broker
and hub, in tests/integration/test_fallback.py; here only the decisions are under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.cloud.calls import CloudCall, CloudResult, QueuedCall
from edge_agent.config import (
    AgentConfig,
    FallbackConfig,
    ModelConfig,
    RemoteModelConfig,
    load_config,
)
from edge_agent.errors import (
    CloudRequestError,
    CloudTimeoutError,
    CloudUnavailableError,
    ConfigError,
    InputError,
)
from edge_agent.metrics import AgentMetrics
from edge_agent.registry import ModelRegistry
from edge_agent.reply import ReplyFormat
from edge_agent.router import QueuedResult, RoutedResult, Router, ServedBy
from edge_agent.runtime import RuntimeInfo
from tests.support.models import DIGITS_INPUT, DIGITS_OUTPUT, DigitsModels


class InProcessCloud:
    """The router's ``Cloud``: answers with the digits fp32 model, or fails as told."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.failure: Exception | None = None
        self.calls: list[CloudCall] = []
        self.queued: dict[str, QueuedCall] = {}

    def infer(self, call: CloudCall) -> CloudResult:
        self.calls.append(call)
        if self.failure is not None:
            raise self.failure
        if call.model != "cloud_digits":
            raise CloudRequestError(f"the cloud answered for {call.model!r}: no such model")
        outputs = self.registry.get("cloud_digits").infer(call.inputs, call.outputs)
        return CloudResult(
            model_name=call.model,
            model_version="7",
            outputs=outputs,
            parameters={"served_by": "cloud"},
            round_trip_s=0.001,
        )

    def enqueue(self, call: CloudCall, reply: ReplyFormat) -> QueuedCall:
        self.calls.append(call)
        queued = QueuedCall(request_id=call.request_id, reply=reply, attempts=0)
        self.queued.setdefault(call.request_id, queued)
        return self.queued[call.request_id]

    def lookup(self, request_id: str) -> QueuedCall | None:
        return self.queued.get(request_id)


@pytest.fixture
def cloud_registry(runtime: RuntimeInfo, digits: DigitsModels) -> Iterator[ModelRegistry]:
    registry = ModelRegistry([ModelConfig(name="cloud_digits", path=digits.model("fp32"))])
    registry.load_all(runtime)
    yield registry
    registry.close()


@pytest.fixture
def cloud(cloud_registry: ModelRegistry) -> InProcessCloud:
    return InProcessCloud(cloud_registry)


@pytest.fixture
def metrics() -> AgentMetrics:
    return AgentMetrics()


@pytest.fixture
def make_router(
    runtime: RuntimeInfo,
    digits: DigitsModels,
    cloud: InProcessCloud,
    metrics: AgentMetrics,
    tmp_path: Path,
) -> Iterator[Any]:
    registries: list[ModelRegistry] = []

    def make(
        *, remote: tuple[RemoteModelConfig, ...] = (), broken: bool = False, **fallback: Any
    ) -> Router:
        path = digits.model("int8")
        if broken:
            path = tmp_path / "broken.tflite"
            path.write_bytes(b"not a model")
        config = FallbackConfig.model_validate({"cloud_model": "cloud_digits", **fallback})
        registry = ModelRegistry([ModelConfig(name="digits", path=path, fallback=config)])
        registry.load_all(runtime)
        registries.append(registry)
        return Router(registry, metrics, cloud, remote_models=remote)

    yield make
    for registry in registries:
        registry.close()


def value(metrics: AgentMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def split_by_confidence(digits: DigitsModels, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """A digit the int8 model is sure of, and one it is not, by its own reference outputs."""
    x, _ = digits.data()
    top = digits.reference("int8").max(axis=1)
    sure = x[np.argmax(top)][None, :]
    unsure = x[np.argmin(np.where(top < threshold, top, np.inf))][None, :]
    return sure, unsure


def routed(result: RoutedResult | QueuedResult) -> RoutedResult:
    assert isinstance(result, RoutedResult)
    return result


def test_always_sends_every_request_with_its_reason(
    make_router: Any, cloud: InProcessCloud, digits: DigitsModels, metrics: AgentMetrics
) -> None:
    router = make_router(policy="always", deadline_s=3.0)
    x, _ = digits.data()
    result = routed(router.infer("digits", {DIGITS_INPUT: x[:2]}, request_id="req-1"))
    assert result.served_by is ServedBy.CLOUD
    assert result.parameters == {
        "served_by": "cloud",
        "fallback_reason": "always",
        "cloud_model": "cloud_digits",
    }
    assert (result.model_name, result.model_version, result.request_id) == ("digits", "7", "req-1")
    np.testing.assert_allclose(
        result.outputs[DIGITS_OUTPUT], digits.reference("fp32")[:2], rtol=1e-5
    )
    (call,) = cloud.calls
    assert (call.model, call.request_id, call.deadline_s) == ("cloud_digits", "req-1", 3.0)
    assert value(metrics, "edge_agent_fallback_total", model="digits", reason="always") == 1
    assert value(metrics, "edge_agent_requests_total", model="digits", served_by="cloud") == 1


def test_a_request_without_id_gets_one_for_the_cloud(
    make_router: Any, cloud: InProcessCloud
) -> None:
    router = make_router(policy="always")
    result = routed(router.infer("digits", {DIGITS_INPUT: np.zeros((1, 64), np.float32)}))
    assert result.request_id
    assert cloud.calls[0].request_id == result.request_id


@pytest.mark.parametrize("rule", ["max_probability", "entropy"])
def test_low_confidence_goes_to_the_cloud_and_confident_stays(
    make_router: Any,
    cloud: InProcessCloud,
    digits: DigitsModels,
    metrics: AgentMetrics,
    rule: str,
) -> None:
    threshold = 0.9 if rule == "max_probability" else 0.75
    router = make_router(policy="on_low_confidence", confidence=rule, threshold=threshold)
    sure, unsure = split_by_confidence(digits, 0.6)
    here = routed(router.infer("digits", {DIGITS_INPUT: sure}))
    assert here.parameters == {"served_by": "edge"}
    there = routed(router.infer("digits", {DIGITS_INPUT: unsure}))
    assert there.served_by is ServedBy.CLOUD
    assert there.fallback_reason == "low_confidence"
    assert len(cloud.calls) == 1
    assert value(metrics, "edge_agent_fallback_total", model="digits", reason="low_confidence") == 1
    assert value(metrics, "edge_agent_requests_total", model="digits", served_by="edge") == 1


def test_a_batch_is_as_sure_as_its_least_sure_row(make_router: Any, digits: DigitsModels) -> None:
    router = make_router(policy="on_low_confidence", threshold=0.9)
    sure, unsure = split_by_confidence(digits, 0.6)
    result = routed(router.infer("digits", {DIGITS_INPUT: np.concatenate([sure, unsure])}))
    assert result.fallback_reason == "low_confidence"
    assert result.outputs[DIGITS_OUTPUT].shape == (2, 10)


def test_on_missing_answers_here_while_the_model_serves(
    make_router: Any, cloud: InProcessCloud
) -> None:
    router = make_router(policy="on_missing")
    result = routed(router.infer("digits", {DIGITS_INPUT: np.zeros((1, 64), np.float32)}))
    assert result.served_by is ServedBy.EDGE
    assert cloud.calls == []


def test_a_model_that_failed_to_load_is_answered_by_the_cloud(make_router: Any) -> None:
    router = make_router(policy="on_missing", broken=True)
    result = routed(router.infer("digits", {DIGITS_INPUT: np.zeros((1, 64), np.float32)}))
    assert (result.served_by, result.fallback_reason) == (ServedBy.CLOUD, "missing")


def test_a_remote_model_maps_to_its_cloud_name(make_router: Any, cloud: InProcessCloud) -> None:
    remote = (RemoteModelConfig(name="big", cloud_model="cloud_digits", deadline_s=2.0),)
    router = make_router(policy="never", remote=remote)
    assert router.knows("big")
    result = routed(router.infer("big", {DIGITS_INPUT: np.zeros((1, 64), np.float32)}, version="3"))
    assert (result.model_name, result.served_by, result.fallback_reason) == (
        "big",
        ServedBy.CLOUD,
        "missing",
    )
    assert (cloud.calls[0].model, cloud.calls[0].version) == ("cloud_digits", "3")


def test_latency_budget_hands_over_once_the_local_estimate_is_over_it(
    make_router: Any, cloud: InProcessCloud
) -> None:
    router = make_router(policy="on_missing", latency_budget_s=1e-9)
    x = {DIGITS_INPUT: np.zeros((1, 64), np.float32)}
    first = routed(router.infer("digits", x))  # no run time measured yet: nothing to go by
    second = routed(router.infer("digits", x))
    assert first.served_by is ServedBy.EDGE
    assert (second.served_by, second.fallback_reason) == (ServedBy.CLOUD, "latency_budget")
    relaxed = make_router(policy="on_missing", latency_budget_s=60.0)
    for _ in range(3):
        assert routed(relaxed.infer("digits", x)).served_by is ServedBy.EDGE


@pytest.mark.parametrize(
    "failure",
    [CloudUnavailableError("breaker open"), CloudTimeoutError("no answer within 1 s")],
)
def test_local_answers_degraded_when_the_cloud_is_away(
    make_router: Any,
    cloud: InProcessCloud,
    digits: DigitsModels,
    metrics: AgentMetrics,
    failure: Exception,
) -> None:
    cloud.failure = failure
    router = make_router(policy="on_low_confidence", threshold=0.9, on_cloud_unavailable="local")
    _, unsure = split_by_confidence(digits, 0.6)
    result = routed(router.infer("digits", {DIGITS_INPUT: unsure}))
    assert result.parameters == {
        "served_by": "edge",
        "fallback_reason": "cloud_unavailable",
        "degraded": True,
    }
    assert result.outputs[DIGITS_OUTPUT].shape == (1, 10)
    always = make_router(policy="always", on_cloud_unavailable="local")
    assert routed(always.infer("digits", {DIGITS_INPUT: unsure})).degraded
    assert value(metrics, "edge_agent_degraded_answers_total", model="digits") == 2


def test_error_fails_and_counts_what_failed(
    make_router: Any, cloud: InProcessCloud, metrics: AgentMetrics
) -> None:
    router = make_router(policy="always", on_cloud_unavailable="error")
    x = {DIGITS_INPUT: np.zeros((1, 64), np.float32)}
    cloud.failure = CloudUnavailableError("the cloud circuit breaker is open")
    with pytest.raises(CloudUnavailableError, match="breaker is open") as unavailable:
        router.infer("digits", x)
    assert unavailable.value.status == 503
    cloud.failure = CloudTimeoutError("no answer")
    with pytest.raises(CloudTimeoutError) as timeout:
        router.infer("digits", x)
    assert timeout.value.status == 504
    assert (
        value(metrics, "edge_agent_request_errors_total", model="digits", error="cloud_unavailable")
        == 1
    )
    assert (
        value(metrics, "edge_agent_request_errors_total", model="digits", error="cloud_timeout")
        == 1
    )


def test_a_cloud_error_answer_is_not_hidden(make_router: Any, metrics: AgentMetrics) -> None:
    router = make_router(policy="always", cloud_model="nonexistent", on_cloud_unavailable="local")
    with pytest.raises(CloudRequestError, match="nonexistent") as error:
        router.infer("digits", {DIGITS_INPUT: np.zeros((1, 64), np.float32)})
    assert error.value.status == 502
    assert (
        value(metrics, "edge_agent_request_errors_total", model="digits", error="cloud_error") == 1
    )


def test_queue_keeps_the_request_and_an_id_is_queued_once(
    make_router: Any, cloud: InProcessCloud, metrics: AgentMetrics
) -> None:
    cloud.failure = CloudUnavailableError("not connected")
    router = make_router(policy="always", on_cloud_unavailable="queue")
    x = {DIGITS_INPUT: np.zeros((1, 64), np.float32)}
    first = router.infer("digits", x, request_id="q-1", reply=ReplyFormat(binary_default=True))
    assert isinstance(first, QueuedResult)
    assert (first.request_id, first.fallback_reason, first.answered) == ("q-1", "always", False)
    assert first.parameters == {"served_by": "cloud", "fallback_reason": "always", "queued": True}
    assert cloud.queued["q-1"].reply == ReplyFormat(
        binary_default=True, model_name="digits", fallback_reason="always", batched=True
    )
    calls = len(cloud.calls)
    again = router.infer("digits", x, request_id="q-1")
    assert isinstance(again, QueuedResult)
    assert len(cloud.calls) == calls  # neither run nor queued a second time
    assert value(metrics, "edge_agent_queued_requests_total", model="digits") == 1


def test_a_remote_model_with_nothing_local_cannot_degrade(
    make_router: Any, cloud: InProcessCloud
) -> None:
    cloud.failure = CloudUnavailableError("not connected")
    router = make_router(policy="on_missing", broken=True, on_cloud_unavailable="local")
    with pytest.raises(CloudUnavailableError, match="not on this device"):
        router.infer("digits", {DIGITS_INPUT: np.zeros((1, 64), np.float32)})


def test_inputs_are_checked_here_before_anything_goes_to_the_cloud(
    make_router: Any, cloud: InProcessCloud
) -> None:
    router = make_router(policy="always")
    with pytest.raises(InputError):
        router.infer("digits", {DIGITS_INPUT: np.zeros((1, 3), np.float32)})
    assert cloud.calls == []


def test_fallback_needs_a_cloud_section(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "device_id: d\nmodels:\n  - {name: m, path: m.tflite, fallback: {policy: always}}\n"
    )
    with pytest.raises(ConfigError, match="no cloud section"):
        load_config(config, environ={})
    env = {
        "HYBRID_AGENT_CLOUD__BROKER": "broker.local:1883",
        "HYBRID_AGENT_CLOUD__BREAKER__FAILURES": "2",
    }
    loaded = load_config(config, environ=env)
    assert loaded.cloud is not None
    assert (loaded.cloud.address.host, loaded.cloud.address.port) == ("broker.local", 1883)
    assert loaded.cloud.breaker.failures == 2


def test_cloud_config_is_checked() -> None:
    base: dict[str, Any] = {"device_id": "d", "models": [{"name": "m", "path": "/m.tflite"}]}
    with pytest.raises(ValueError, match="local model"):
        AgentConfig.model_validate(
            {**base, "cloud": {"broker": "b:1883", "remote_models": [{"name": "m"}]}}
        )
    with pytest.raises(ValueError, match="host:port"):
        AgentConfig.model_validate({**base, "cloud": {"broker": "unix:/x"}})
    with pytest.raises(ValueError, match="on_cloud_unavailable"):
        AgentConfig.model_validate(
            {
                **base,
                "cloud": {
                    "broker": "b:1883",
                    "remote_models": [{"name": "r", "on_cloud_unavailable": "local"}],
                },
            }
        )
