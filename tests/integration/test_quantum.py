"""The quantum classifier served like any other model: a real ``cloud-hub serve`` over HTTP
(tritonclient) and over MQTT from a real ``edge-agent run`` (Mosquitto in between), checked
against the classifier run in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import tritonclient.http as triton
from paho.mqtt.enums import CallbackAPIVersion
from tritonclient.utils import InferenceServerException

from edge_agent.errors import ResponseError
from protocols import (
    MqttErrorResponse,
    decode_mqtt_response,
    encode_mqtt_request,
    infer_request_topic,
    infer_response_topic,
)
from quantum.inference import QuantumClassifier
from tests.support.broker import Broker
from tests.support.fallback import AgentProcess, Watcher, start_mqtt_hub
from tests.support.hub import HubProcess
from tests.support.quantum import MAX_BATCH_SIZE, MODEL_NAME, quantum_repository, small_model

pytestmark = pytest.mark.integration

CLASSES = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = small_model().path
    assert path is not None
    return quantum_repository(tmp_path_factory.mktemp("repo"), path)


@pytest.fixture(scope="module")
def hub(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = HubProcess(repository=repository, workdir=tmp_path_factory.mktemp("hub"))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def client(hub: HubProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(hub.url)
    yield c
    c.close()


def _expected(x: np.ndarray) -> np.ndarray:
    return QuantumClassifier(small_model().model).predict_proba(x)


def _features(x: np.ndarray, binary: bool = True) -> triton.InferInput:
    tin = triton.InferInput("features", list(x.shape), "FP32")
    tin.set_data_from_numpy(x.astype(np.float32), binary_data=binary)
    return tin


def test_metadata_marks_it_experimental(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata(MODEL_NAME)
    assert meta["platform"] == "quantum_qml"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["parameters"]["experimental"] is True
    assert meta["parameters"]["simulator"] == "statevector:exact"
    config = client.get_model_config(MODEL_NAME)
    assert config["backend"] == "quantum"
    assert "experimental" in config["runtime"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_batches_over_http_match_the_classifier(
    client: triton.InferenceServerClient, binary: bool
) -> None:
    x = small_model().split.x_test[:MAX_BATCH_SIZE].astype(np.float32)
    result = client.infer(
        MODEL_NAME,
        [_features(x, binary)],
        outputs=[
            triton.InferRequestedOutput("probabilities", binary_data=binary),
            triton.InferRequestedOutput("label", binary_data=binary),
        ],
    )
    expected = _expected(x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
    labels = [CLASSES[i] for i in expected.argmax(axis=1)]
    got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
    assert got == labels  # tritonclient gives BYTES as bytes from binary, str from JSON


def test_classification_extension_names_the_classes(client: triton.InferenceServerClient) -> None:
    x = small_model().split.x_test[:3].astype(np.float32)
    result = client.infer(
        MODEL_NAME,
        [_features(x)],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=2)],
    )
    expected = _expected(x)
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 2)
    for row, probabilities in zip(top, expected, strict=True):
        score, index, label = row[0].decode().split(":")
        assert int(index) == int(probabilities.argmax())
        assert label == CLASSES[int(index)]
        assert float(score) == pytest.approx(probabilities.max(), abs=1e-6)


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (np.ones((2, 3)), "has shape [2, 3]; model 'iris_vqc' expects [-1, 4]"),
        (np.array([[5.1, 3.5, np.nan, 0.2], [1, 1, 1, 1]]), "row(s) 0 hold NaN or infinity"),
        (np.full((1, 4), np.inf), "must be finite"),
        (np.ones((MAX_BATCH_SIZE + 1, 4)), f"takes 1 to {MAX_BATCH_SIZE}"),
        (np.ones((0, 4)), "has a batch of 0"),
    ],
    ids=["feature-count", "nan", "inf", "batch-too-large", "batch-empty"],
)
def test_bad_inputs_get_400_with_a_reason_and_the_hub_keeps_serving(
    client: triton.InferenceServerClient, x: np.ndarray, fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL_NAME, [_features(x)])
    assert info.value.status() == "400"
    assert fragment in info.value.message()
    good = small_model().split.x_test[:2].astype(np.float32)
    result = client.infer(MODEL_NAME, [_features(good)])
    np.testing.assert_allclose(result.as_numpy("probabilities"), _expected(good), atol=1e-6)


def test_a_bad_request_does_not_spoil_the_batch_it_would_have_joined(
    client: triton.InferenceServerClient,
) -> None:
    """The hub merges concurrent requests; a NaN row is refused before it can join them."""
    x = small_model().split.x_test[:8].astype(np.float32)
    bad = x[:1].copy()
    bad[0, 0] = np.nan
    pending = []
    for i in range(8):
        pending.append(client.async_infer(MODEL_NAME, [_features(x[i : i + 1])]))
        if i == 3:
            pending.append(client.async_infer(MODEL_NAME, [_features(bad)]))
    expected = _expected(x)
    answers = []
    refused = []
    for request in pending:
        try:
            answers.append(request.get_result().as_numpy("probabilities"))
        except InferenceServerException as exc:
            refused.append(exc.status())
            answers.append(None)
    assert refused == ["400"]
    assert answers[4] is None
    got = np.concatenate([a for a in answers if a is not None])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_served_to_a_device_over_mqtt_through_the_fallback_path(
    repository: Path, broker: Broker, tmp_path: Path
) -> None:
    hub = start_mqtt_hub(repository, tmp_path / "mqtt-hub", broker)
    agent = AgentProcess(
        workdir=tmp_path / "agent",
        config={
            "device_id": "sensor-7",
            "models": [],
            "cloud": {
                "broker": broker.address,
                "retry_interval_s": 0.3,
                "reconnect_min_s": 0.05,
                "remote_models": [{"name": "iris", "cloud_model": MODEL_NAME, "deadline_s": 20}],
            },
        },
    )
    try:
        agent.start()
        x = small_model().split.x_test[:5].astype(np.float32)
        expected = _expected(x)
        with agent.client() as edge:
            for binary in (True, False):
                answer = edge.infer(
                    "iris", {"features": x}, request_id=f"q-{binary}", binary=binary
                )
                assert answer.parameters["served_by"] == "cloud"
                assert answer.parameters["cloud_model"] == MODEL_NAME
                np.testing.assert_allclose(answer.outputs["probabilities"], expected, atol=1e-6)
                labels = [CLASSES[i].encode() for i in expected.argmax(axis=1)]
                assert list(answer.outputs["label"]) == labels
            with pytest.raises(ResponseError) as refused:
                edge.infer("iris", {"features": np.ones((1, 3), np.float32)}, request_id="bad")
            # The hub's error reply says the request was bad; the agent passes that on.
            assert refused.value.status == 400
            assert "the cloud answered for 'iris_vqc'" in refused.value.message
            assert "expects [-1, 4]" in refused.value.message
            again = edge.infer("iris", {"features": x[:1]}, request_id="after-bad")
            np.testing.assert_allclose(again.outputs["probabilities"], expected[:1], atol=1e-6)

        # A device speaking MQTT directly gets an error reply for non-finite features.
        device = "raw-device"
        watcher = Watcher(broker, infer_response_topic(device))
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        try:
            nan = np.array([[5.0, np.nan, 1.0, 0.1]], np.float32)
            publisher.publish(
                infer_request_topic(device),
                encode_mqtt_request(MODEL_NAME, {"features": nan}, id="nan-1", binary=True),
                qos=1,
            ).wait_for_publish(5)
            reply = decode_mqtt_response(watcher.next(timeout_s=20).payload)
            assert isinstance(reply, MqttErrorResponse)
            assert reply.id == "nan-1"
            assert "hold NaN or infinity" in reply.error
            publisher.publish(
                infer_request_topic(device),
                encode_mqtt_request(MODEL_NAME, {"features": x[:2]}, id="ok-1", binary=True),
                qos=1,
            ).wait_for_publish(5)
            ok = decode_mqtt_response(watcher.next(timeout_s=20).payload)
            assert not isinstance(ok, MqttErrorResponse)
            assert ok.response.id == "ok-1"
            np.testing.assert_allclose(ok.tensors["probabilities"], expected[:2], atol=1e-6)
        finally:
            publisher.loop_stop()
            publisher.disconnect()
            watcher.close()
    finally:
        agent.stop()
        hub.stop()
