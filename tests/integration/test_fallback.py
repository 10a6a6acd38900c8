"""Edge-to-cloud fallback through real processes: Mosquitto, ``cloud-hub serve`` with its MQTT
bridge, and ``edge-agent run``, called over the agent's local HTTP API.

The edge runs the digits int8 model; the cloud model is the digits fp32 ``.tflite`` served by the
hub's tflite backend, so each answer can be checked against the interpreter's own outputs.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import QueuedError, ResponseError
from protocols import DeviceStatus, Telemetry, status_topic, telemetry_topic
from tests.support.broker import Broker
from tests.support.fallback import (
    Watcher,
    agent_starter,
    fallback_repository,
    start_mqtt_hub,
    wait_hub_connected,
)
from tests.support.hub import HubProcess
from tests.support.models import (
    DIGITS_INPUT,
    DIGITS_LABELS,
    DIGITS_OUTPUT,
    DigitsModels,
    ensure_digits_models,
    first_available_runtime,
    fixed_batch_model,
    output_scale,
    require,
)

pytestmark = pytest.mark.integration

DEVICE = "fallback-device"
THRESHOLD = 0.9
MARGIN = 0.02
"""Digits whose int8 confidence is this close to the threshold are left out: the agent's int8
outputs equal the reference to within one quantization step, which may tip them either way."""


@pytest.fixture(scope="module")
def digits() -> DigitsModels:
    return require(ensure_digits_models)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def repository(digits: DigitsModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fallback_repository(tmp_path_factory.mktemp("repo"), digits)


@pytest.fixture
def hub(repository: Path, broker: Broker, tmp_path: Path) -> Iterator[HubProcess]:
    process = start_mqtt_hub(repository, tmp_path / "hub", broker)
    yield process
    process.stop()


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Any]:
    with agent_starter(tmp_path) as make:
        yield make


def cloud_section(broker: Broker, **settings: Any) -> dict[str, Any]:
    return {"broker": broker.address, "retry_interval_s": 0.3, "reconnect_min_s": 0.05, **settings}


def test_confident_digits_stay_at_the_edge_and_the_rest_go_to_the_cloud_model(
    digits: DigitsModels, broker: Broker, hub: HubProcess, make_agent: Any
) -> None:
    agent = make_agent(
        {
            "device_id": DEVICE,
            "models": [
                {
                    "name": "digits",
                    "path": str(digits.model("int8")),
                    "fallback": {
                        "policy": "on_low_confidence",
                        "threshold": THRESHOLD,
                        "cloud_model": "cloud_digits",
                    },
                }
            ],
            "cloud": cloud_section(
                broker, remote_models=[{"name": "digits_large", "cloud_model": "cloud_digits"}]
            ),
        }
    )
    x, _ = digits.data()
    edge_reference = digits.reference("int8")
    cloud_reference = digits.reference("fp32")
    step = output_scale(first_available_runtime(), digits.model("int8"))
    top = edge_reference.max(axis=1)
    rows = np.flatnonzero(np.abs(top - THRESHOLD) > MARGIN)
    served: dict[str, int] = {"edge": 0, "cloud": 0}
    with agent.client() as client:
        for i in rows:
            result = client.infer("digits", {DIGITS_INPUT: x[i : i + 1]}, request_id=f"d{i}")
            assert result.id == f"d{i}"
            got = result.outputs[DIGITS_OUTPUT]
            if top[i] >= THRESHOLD:
                assert result.parameters == {"served_by": "edge"}
                np.testing.assert_allclose(got, edge_reference[i : i + 1], atol=step * 1.01)
            else:
                assert result.parameters == {
                    "served_by": "cloud",
                    "fallback_reason": "low_confidence",
                    "cloud_model": "cloud_digits",
                }
                np.testing.assert_allclose(got, cloud_reference[i : i + 1], rtol=1e-5, atol=1e-6)
            served[str(result.served_by)] += 1
        remote = client.infer("digits_large", {DIGITS_INPUT: x[:3]})
    assert served["edge"] > 0
    assert served["cloud"] > 0
    assert (remote.served_by, remote.fallback_reason) == ("cloud", "missing")
    np.testing.assert_allclose(
        remote.outputs[DIGITS_OUTPUT], cloud_reference[:3], rtol=1e-5, atol=1e-6
    )
    low = agent.metric('edge_agent_fallback_total{model="digits",reason="low_confidence"}')
    missing = agent.metric('edge_agent_fallback_total{model="digits_large",reason="missing"}')
    assert (low, missing) == (served["cloud"], 1)
    assert (
        agent.metric('edge_agent_requests_total{model="digits",served_by="edge"}') == served["edge"]
    )
    assert agent.metric("edge_agent_cloud_round_trip_seconds_count") == served["cloud"] + 1


def test_status_is_retained_with_a_last_will_and_telemetry_arrives(
    digits: DigitsModels, broker: Broker, hub: HubProcess, make_agent: Any
) -> None:
    agent = make_agent(
        {
            "device_id": DEVICE,
            "device_class": "pi",
            "models": [{"name": "digits", "path": str(digits.model("int8"))}],
            "cloud": cloud_section(broker, telemetry_interval_s=0.2),
        }
    )
    with agent.client() as client:
        client.infer("digits", {DIGITS_INPUT: np.zeros((1, 64), np.float32)})
    watcher = Watcher(broker, status_topic(DEVICE), telemetry_topic(DEVICE))
    try:
        first = watcher.next()
        assert (first.topic, first.retain) == (status_topic(DEVICE), True)
        status = DeviceStatus.model_validate(json.loads(first.payload))
        telemetry: Telemetry | None = None
        while status.models != ["digits"] or telemetry is None:  # a newer status may follow
            message = watcher.next()
            if message.topic == status_topic(DEVICE):
                status = DeviceStatus.model_validate(json.loads(message.payload))
            else:
                telemetry = Telemetry.model_validate(json.loads(message.payload))
        assert (status.state.value, status.device_class) == ("online", "pi")
        assert telemetry.device_id == DEVICE
        assert telemetry.counters["edge_agent_requests_total{model=digits,served_by=edge}"] == 1.0
        assert telemetry.gauges["edge_agent_cloud_connected"] == 1.0
        late = Watcher(broker, status_topic(DEVICE))  # the retained status is the newest
        try:
            kept = late.next()
            assert kept.retain
            assert DeviceStatus.model_validate(json.loads(kept.payload)).models == ["digits"]
        finally:
            late.close()
        agent.kill()  # no goodbye: the broker publishes the Last Will
        while True:
            message = watcher.next()
            if message.topic == status_topic(DEVICE):
                break
        assert DeviceStatus.model_validate(json.loads(message.payload)).state.value == "offline"
    finally:
        watcher.close()


def test_hub_down_local_degrades_error_fails_fast_queue_delivers_after_a_kill(
    digits: DigitsModels, broker: Broker, hub: HubProcess, make_agent: Any
) -> None:
    def model(name: str, unavailable: str) -> dict[str, Any]:
        return {
            "name": name,
            "path": str(digits.model("int8")),
            "fallback": {
                "policy": "always",
                "cloud_model": "cloud_digits",
                "deadline_s": 1.0,
                "on_cloud_unavailable": unavailable,
            },
        }

    config = {
        "device_id": DEVICE,
        "models": [model("m_local", "local"), model("m_error", "error"), model("m_queue", "queue")],
        "cloud": cloud_section(broker, breaker={"failures": 2, "cooldown_s": 3.0}),
    }
    agent = make_agent(config)
    x, _ = digits.data()
    cloud_reference = digits.reference("fp32")
    one = {DIGITS_INPUT: x[:1]}
    with agent.client() as client:
        for name in ("m_local", "m_error", "m_queue"):
            assert client.infer(name, one).served_by == "cloud"

        hub.stop()  # a clean stop: the hub's retained status turns offline, the breaker opens
        deadline = time.monotonic() + 10
        while agent.metric("edge_agent_cloud_hub_online") != 0:
            assert time.monotonic() < deadline, "the agent did not learn the hub is offline"
            time.sleep(0.02)
        started = time.monotonic()
        degraded = client.infer("m_local", one)  # at once: no deadline to wait out
        assert degraded.parameters == {
            "served_by": "edge",
            "fallback_reason": "cloud_unavailable",
            "degraded": True,
        }
        with pytest.raises(ResponseError, match="says it is offline") as fast:
            client.infer("m_error", one)
        assert fast.value.status == 503
        assert time.monotonic() - started < 3.0  # not the 5 s deadline
        assert agent.metric("edge_agent_cloud_breaker_state") == 2
        assert client.infer("m_local", one).degraded

        queued: list[str] = []
        for i in range(20):
            with pytest.raises(QueuedError) as waiting:
                client.infer("m_queue", {DIGITS_INPUT: x[i : i + 1]}, request_id=f"q{i}")
            assert (waiting.value.request_id, waiting.value.reason) == (f"q{i}", "always")
            queued.append(f"q{i}")
        assert client.result("q0") is None
        with pytest.raises(QueuedError):  # the same id again: still the one request
            client.infer("m_queue", {DIGITS_INPUT: x[:1]}, request_id="q0")
        with pytest.raises(ResponseError) as unknown:
            client.result("never-sent")
        assert unknown.value.status == 404

    agent.kill()
    agent.start()  # same data dir: the outbox is still there
    assert agent.metric('edge_agent_outbox_depth{kind="request"}') == 20
    hub.start()
    wait_hub_connected(hub)
    with agent.client() as client:
        for i, request_id in enumerate(queued):
            answer = client.wait_result(request_id, timeout_s=60)
            assert answer.id == request_id
            assert answer.parameters == {
                "served_by": "cloud",
                "fallback_reason": "always",
                "queued": True,
            }
            np.testing.assert_allclose(
                answer.outputs[DIGITS_OUTPUT], cloud_reference[i : i + 1], rtol=1e-5, atol=1e-6
            )
            again = client.result(request_id)  # fetching again gives the same answer
            assert again is not None
            np.testing.assert_array_equal(
                again.outputs[DIGITS_OUTPUT], answer.outputs[DIGITS_OUTPUT]
            )
        resent = client.infer("m_queue", {DIGITS_INPUT: x[:1]}, request_id="q0")
        assert resent.parameters["queued"] is True  # the stored answer, not a second run
        np.testing.assert_allclose(resent.outputs[DIGITS_OUTPUT], cloud_reference[:1], rtol=1e-5)
    assert agent.metric('edge_agent_outbox_delivered_total{kind="request"}') == 20
    assert agent.metric('edge_agent_outbox_depth{kind="answer"}') == 20


def _classify(agent: Any, model: str, x: np.ndarray, k: int, request_id: str) -> Any:
    """``POST .../infer`` asking for the top ``k`` classes: (status, JSON answer)."""
    body = {
        "id": request_id,
        "inputs": [
            {
                "name": DIGITS_INPUT,
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
        "outputs": [{"name": DIGITS_OUTPUT, "parameters": {"classification": k}}],
    }
    return _http(agent, "POST", f"/v2/models/{model}/infer", json.dumps(body).encode())


def _http(agent: Any, method: str, path: str, body: bytes | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", agent.api_port, timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_cloud_answers_are_classified_by_the_batch_dimension_of_the_model_asked(
    digits: DigitsModels, broker: Broker, hub: HubProcess, make_agent: Any, tmp_path: Path
) -> None:
    """The hub's ``cloud_digits`` answers ``[n, 10]`` every time. Classified, that is ``[k]`` for
    a local model with fixed shapes (no batch dimension, as Triton's ``max_batch_size: 0``) and
    for a remote model set ``batched: false``, and ``[n, k]`` for a remote model with a batch;
    the same whether answered at once or queued while the hub is down and fetched later."""
    k = 3
    queue = {"deadline_s": 1.0, "on_cloud_unavailable": "queue"}
    agent = make_agent(
        {
            "device_id": DEVICE,
            "models": [
                {
                    "name": "fixed",
                    "path": str(fixed_batch_model(digits, "int8", tmp_path)),
                    "labels": str(digits.labels),
                    "fallback": {"policy": "always", "cloud_model": "cloud_digits", **queue},
                }
            ],
            "cloud": cloud_section(
                broker,
                remote_models=[
                    {"name": "remote", "cloud_model": "cloud_digits", **queue},
                    {
                        "name": "remote_flat",
                        "cloud_model": "cloud_digits",
                        "batched": False,
                        **queue,
                    },
                ],
            ),
        }
    )
    x, _ = digits.data()
    reference = digits.reference("fp32")
    cases = {"fixed": (x[:1], [k]), "remote": (x[:2], [2, k]), "remote_flat": (x[:1], [k])}

    def check(model: str, answer: dict[str, Any]) -> None:
        rows, shape = cases[model]
        (output,) = answer["outputs"]
        assert (output["datatype"], output["shape"]) == ("BYTES", shape)
        entries = [entry.split(":") for entry in output["data"]]
        top = np.argsort(-reference[: len(rows)], axis=1, kind="stable")[:, :k]
        assert [int(e[1]) for e in entries] == top.ravel().tolist()
        if model == "fixed":  # the local model's labels name the cloud's classes
            assert [e[2] for e in entries] == [DIGITS_LABELS[int(e[1])] for e in entries]

    for model, (rows, _) in cases.items():
        status, answer = _classify(agent, model, rows, k, f"now-{model}")
        assert status == 200, answer
        assert answer["parameters"]["served_by"] == "cloud"
        check(model, answer)

    hub.stop()
    for model, (rows, _) in cases.items():
        status, pending = _classify(agent, model, rows, k, f"later-{model}")
        assert status == 202, pending
    hub.start()
    wait_hub_connected(hub)
    for model in cases:
        deadline = time.monotonic() + 60
        while (got := _http(agent, "GET", f"/v2/requests/later-{model}"))[0] == 202:
            assert time.monotonic() < deadline, f"no answer for later-{model}"
            time.sleep(0.1)
        status, answer = got
        assert status == 200, answer
        assert answer["parameters"]["queued"] is True
        check(model, answer)
