"""The hub's MQTT bridge through a real Mosquitto broker."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols import (
    decode_mqtt_response,
    encode_mqtt_request,
    infer_request_topic,
    infer_response_topic,
)
from tests.support import onnx_models
from tests.support.broker import Broker
from tests.support.hub import HubProcess, add_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    add_model(
        repo,
        "add_sub",
        {
            "backend": "onnxruntime",
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_us": 1000},
        },
        onnx_models.add_sub,
    )
    add_model(
        repo,
        "slow_batch",
        {
            "backend": "onnxruntime",
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_us": 3_000_000},
        },
        onnx_models.add_sub,
    )
    return repo


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(workdir=tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


def start_hub(repository: Path, workdir: Path, broker: Broker, **mqtt: object) -> HubProcess:
    hub = HubProcess(
        repository=repository,
        workdir=workdir,
        config={
            "mqtt": {"broker": broker.address, **mqtt},
            "limits": {"payload_max_bytes": 200_000},
        },
    )
    hub.start()
    deadline = time.monotonic() + 10
    while "hub_mqtt_connected 1.0" not in metrics(hub):
        assert time.monotonic() < deadline, hub.log
        time.sleep(0.05)
    return hub


@pytest.fixture(scope="module")
def hub(
    repository: Path, module_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubProcess]:
    process = start_hub(repository, tmp_path_factory.mktemp("hub"), module_broker)
    yield process
    process.stop()


def metrics(hub: HubProcess) -> str:
    with urllib.request.urlopen(f"http://{hub.url}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def counter(hub: HubProcess, line_prefix: str) -> float:
    for line in metrics(hub).splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def inference_count(hub: HubProcess, model: str = "add_sub") -> int:
    with urllib.request.urlopen(f"http://{hub.url}/v2/models/{model}/stats", timeout=5) as reply:
        return int(json.load(reply)["model_stats"][0]["inference_count"])


class Device:
    """A paho client playing a device: it collects what arrives on its reply topics."""

    def __init__(self, broker: Broker, device_id: str, protocol: int = mqtt.MQTTv5) -> None:
        self.device_id = device_id
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=device_id, protocol=protocol
        )
        self.client.on_message = lambda c, u, m: self.received.put(m)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert connected.wait(5)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.subscribe([(infer_response_topic(device_id), 1), (f"replies/{device_id}/#", 1)])
        assert subscribed.wait(5)

    def send(self, payload: bytes, *, topic: str | None = None, **properties: object) -> None:
        props = None
        if properties:
            props = Properties(PacketTypes.PUBLISH)
            for name, value in properties.items():
                setattr(props, name, value)
        self.client.publish(
            topic or infer_request_topic(self.device_id), payload, qos=1, properties=props
        ).wait_for_publish(5)

    def next(self, timeout_s: float = 5.0) -> mqtt.MQTTMessage:
        return self.received.get(timeout=timeout_s)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def x_pair(value: float) -> dict[str, np.ndarray]:
    a = np.full((1, 4), value, np.float32)
    return {"INPUT0": a, "INPUT1": a}


def test_mosquitto_rr_gets_an_answer_to_plain_json(hub: HubProcess, module_broker: Broker) -> None:
    rr = shutil.which("mosquitto_rr")
    if rr is None:
        pytest.fail("mosquitto_rr is missing: apt-get install mosquitto-clients")
    request = {
        "model_name": "add_sub",
        "id": "rr-1",
        "inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]},
        ],
    }
    out = subprocess.run(
        [
            rr,
            "-V",
            "5",
            "-h",
            module_broker.host,
            "-p",
            str(module_broker.port),
            "-t",
            infer_request_topic("rr-device"),
            "-e",
            "replies/rr-device",
            "-m",
            json.dumps(request),
            "-W",
            "10",
        ],
        capture_output=True,
        check=True,
        timeout=15,
    )
    reply = json.loads(out.stdout)
    assert reply["id"] == "rr-1"
    assert reply["parameters"]["served_by"] == "cloud"
    assert reply["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]
    assert reply["outputs"][1]["data"] == [0.0, 1.0, 2.0, 3.0]


def test_mqtt311_client_is_answered_on_the_default_reply_topic(
    hub: HubProcess, module_broker: Broker
) -> None:
    device = Device(module_broker, "cam-311", protocol=mqtt.MQTTv311)
    try:
        for i in range(5):
            device.send(encode_mqtt_request("add_sub", x_pair(i), id=f"q{i}"))
        answers = {}
        for _ in range(5):
            message = device.next()
            assert message.topic == infer_response_topic("cam-311")
            reply = decode_mqtt_response(message.payload)
            answers[reply.response.id] = reply.tensors["OUTPUT0"][0, 0]  # type: ignore[union-attr]
        assert answers == {f"q{i}": 2.0 * i for i in range(5)}
    finally:
        device.close()


def test_mqtt5_binary_request_with_correlation(hub: HubProcess, module_broker: Broker) -> None:
    device = Device(module_broker, "cam-5")
    try:
        a = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
        device.send(
            encode_mqtt_request("add_sub", {"INPUT0": a, "INPUT1": a}, binary=True),
            ResponseTopic="replies/cam-5/x",
            CorrelationData=b"\x01\x02corr",
            MessageExpiryInterval=30,
        )
        message = device.next()
        assert message.topic == "replies/cam-5/x"
        assert message.properties.CorrelationData == b"\x01\x02corr"
        reply = decode_mqtt_response(message.payload)
        np.testing.assert_array_equal(reply.tensors["OUTPUT0"], a + a)  # type: ignore[union-attr]
        np.testing.assert_array_equal(reply.tensors["OUTPUT1"], a - a)  # type: ignore[union-attr]
    finally:
        device.close()


def test_a_repeated_request_id_is_answered_without_running_again(
    hub: HubProcess, module_broker: Broker
) -> None:
    device = Device(module_broker, "cam-dup")
    try:
        device.send(encode_mqtt_request("add_sub", x_pair(7), id="same-id"))
        first = decode_mqtt_response(device.next().payload)
        runs = inference_count(hub)
        duplicates = counter(hub, 'hub_mqtt_requests_total{outcome="duplicate"}')
        device.send(encode_mqtt_request("add_sub", x_pair(7), id="same-id"))
        again = decode_mqtt_response(device.next().payload)
        assert again.response.id == first.response.id == "same-id"  # type: ignore[union-attr]
        np.testing.assert_array_equal(again.tensors["OUTPUT0"], first.tensors["OUTPUT0"])  # type: ignore[union-attr]
        assert inference_count(hub) == runs
        assert counter(hub, 'hub_mqtt_requests_total{outcome="duplicate"}') == duplicates + 1
    finally:
        device.close()


def test_requests_past_their_expiry_are_dropped_and_counted(
    hub: HubProcess, module_broker: Broker
) -> None:
    device = Device(module_broker, "cam-exp")
    try:
        before = counter(hub, 'hub_mqtt_requests_total{outcome="expired"}')
        device.send(
            encode_mqtt_request("slow_batch", x_pair(1), id="late"), MessageExpiryInterval=1
        )
        with pytest.raises(queue.Empty):
            device.next(timeout_s=4)
        assert counter(hub, 'hub_mqtt_requests_total{outcome="expired"}') == before + 1
    finally:
        device.close()


def test_a_storm_of_bad_messages_leaves_the_hub_answering(
    hub: HubProcess, module_broker: Broker
) -> None:
    device = Device(module_broker, "cam-storm")
    try:
        bad = [
            b"",
            b"not json",
            b"HIB1\x05",
            b"HIB1\xff\xff\x00\x00{}",
            b'{"model_name": "add_sub", "inputs": [{"name": "INPUT0"}]}',
            encode_mqtt_request("nope", x_pair(1), id="unknown-model"),
            encode_mqtt_request("add_sub", {"INPUT0": np.ones((1, 3), np.float32)}, id="bad-shape"),
            encode_mqtt_request(
                "add_sub", {"big": np.ones(60_000, np.float32)}, binary=True
            ),  # over 200 kB
        ]
        before = counter(hub, 'hub_mqtt_requests_total{outcome="malformed"}')
        for _ in range(10):
            for payload in bad:
                device.send(payload)
        errors = [decode_mqtt_response(device.next().payload) for _ in range(10 * len(bad))]
        assert all(hasattr(e, "error") for e in errors)
        messages = " | ".join({e.error for e in errors})  # type: ignore[union-attr]
        for fragment in (
            "payload is empty",
            "no model named 'nope'",
            "the limit is 200000",
            "expects [-1, 4]",
            "runs past the end",
        ):
            assert fragment in messages, messages
        # Reserved and malformed device ids in the topic: nowhere to answer, counted and dropped.
        device.send(
            encode_mqtt_request("add_sub", x_pair(1)), topic="hybrid/v1/fleet/infer/request"
        )
        device.send(
            encode_mqtt_request("add_sub", x_pair(1)),
            topic="hybrid/v1/" + "x" * 70 + "/infer/request",
        )
        device.send(encode_mqtt_request("add_sub", x_pair(3), id="good"))
        good = decode_mqtt_response(device.next().payload)
        assert good.response.id == "good"  # type: ignore[union-attr]
        assert good.tensors["OUTPUT0"][0, 0] == 6.0  # type: ignore[union-attr]
        assert counter(hub, 'hub_mqtt_requests_total{outcome="malformed"}') >= before + 10 * 5 + 2
    finally:
        device.close()


def test_two_hubs_share_the_requests(repository: Path, make_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broker = make_broker()
    for i in range(2):
        (tmp_path / f"hub{i}").mkdir()
    hubs = [start_hub(repository, tmp_path / f"hub{i}", broker) for i in range(2)]
    device = Device(broker, "cam-shared")
    try:
        for i in range(60):
            device.send(encode_mqtt_request("add_sub", x_pair(i), id=f"s{i}"))
        ids = {decode_mqtt_response(device.next().payload).response.id for _ in range(60)}  # type: ignore[union-attr]
        assert ids == {f"s{i}" for i in range(60)}
        counts = [inference_count(h) for h in hubs]
        assert sum(counts) == 60
        assert min(counts) > 0, counts
    finally:
        device.close()
        for h in hubs:
            h.stop()


def test_framed_requests_get_the_output_form_they_ask_for(
    hub: HubProcess, module_broker: Broker
) -> None:
    device = Device(module_broker, "cam-form")
    try:
        small = x_pair(2)  # 4-element outputs: JSON unless binary is asked for
        device.send(
            encode_mqtt_request("add_sub", small, binary=True), ResponseTopic="replies/cam-form/a"
        )
        assert device.next().payload.startswith(b"{")
        device.send(
            encode_mqtt_request("add_sub", small, binary=True, binary_outputs=True),
            ResponseTopic="replies/cam-form/b",
        )
        framed = device.next().payload
        assert framed.startswith(b"HIB1")
        assert decode_mqtt_response(framed).tensors["OUTPUT0"][0, 0] == 4.0  # type: ignore[union-attr]
    finally:
        device.close()
