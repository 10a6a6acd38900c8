"""The MQTT wire contract through a real Mosquitto broker.

A small responder built only from ``protocols`` answers requests the way DESIGN.md says a hub
must: on the MQTT 5 Response Topic with the Correlation Data echoed, else on the default reply
topic correlated by the request id. This proves the contract with third-party clients
(``mosquitto_rr``, an MQTT 3.1.1 paho client) before any hub exists.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols import (
    ProtocolError,
    TopicKind,
    decode_mqtt_request,
    decode_mqtt_response,
    encode_mqtt_error,
    encode_mqtt_request,
    encode_mqtt_response,
    infer_request_topic,
    infer_response_topic,
    parse_topic,
    shared_request_subscription,
)
from tests.support.broker import Broker

pytestmark = pytest.mark.integration


def _client(client_id: str, protocol: int = mqtt.MQTTv5) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)


def _connect(client: mqtt.Client, broker: Broker) -> None:
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(5), "no CONNACK"


class Responder:
    """Doubles tensor ``x`` of model ``double``; anything else gets an error reply."""

    def __init__(self, broker: Broker) -> None:
        self.errors = 0
        self.client = _client("responder")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        _connect(self.client, broker)
        self.client.subscribe(shared_request_subscription(), qos=1)
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        device_id = parse_topic(msg.topic).device_id or ""
        props = getattr(msg, "properties", None)
        reply_to = getattr(props, "ResponseTopic", None) or infer_response_topic(device_id)
        reply_props = Properties(PacketTypes.PUBLISH)
        correlation = getattr(props, "CorrelationData", None)
        if correlation is not None:
            reply_props.CorrelationData = correlation
        try:
            decoded = decode_mqtt_request(msg.payload)
            request = decoded.request
            if request.model_name != "double":  # type: ignore[attr-defined]
                raise ProtocolError(f"unknown model {request.model_name!r}")  # type: ignore[attr-defined]
            binary = not msg.payload.startswith(b"{")
            payload = encode_mqtt_response(
                {"y": decoded.tensors["x"] * 2}, model_name="double", id=request.id, binary=binary
            )
        except ProtocolError as exc:
            self.errors += 1
            payload = encode_mqtt_error(str(exc))
        client.publish(reply_to, payload, qos=1, properties=reply_props)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def responder(broker: Broker) -> Iterator[Responder]:
    r = Responder(broker)
    yield r
    r.close()


def test_mosquitto_rr_calls_a_model_with_plain_json(broker: Broker, responder: Responder) -> None:
    rr = shutil.which("mosquitto_rr")
    if rr is None:
        pytest.skip("mosquitto_rr is not installed")
    request = {
        "model_name": "double",
        "id": "req-1",
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}],
    }
    out = subprocess.run(
        [
            rr,
            "-V",
            "5",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            infer_request_topic("cam-01"),
            "-e",
            "replies/cam-01/1",
            "-m",
            json.dumps(request),
            "-W",
            "5",
        ],
        capture_output=True,
        check=True,
        timeout=10,
    )
    reply = decode_mqtt_response(out.stdout.strip())
    assert not hasattr(reply, "error"), out.stdout
    assert reply.response.id == "req-1"  # type: ignore[union-attr]
    assert reply.tensors["y"].tolist() == [[2.0, 4.0], [6.0, 8.0]]  # type: ignore[union-attr]


def test_mqtt5_binary_request_answered_on_response_topic_with_correlation(
    broker: Broker, responder: Responder
) -> None:
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client = _client("cam-02")
    client.on_message = lambda c, u, m: got.put(m)
    _connect(client, broker)
    client.subscribe("replies/cam-02/#", qos=1)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "replies/cam-02/a"
    props.CorrelationData = b"\x00corr-42"
    props.MessageExpiryInterval = 30
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    payload = encode_mqtt_request("double", {"x": x}, id="a")
    assert payload[:4] == b"HIB1"
    client.publish(
        infer_request_topic("cam-02"), payload, qos=1, properties=props
    ).wait_for_publish(5)
    msg = got.get(timeout=5)
    assert msg.topic == "replies/cam-02/a"
    assert msg.properties.CorrelationData == b"\x00corr-42"
    reply = decode_mqtt_response(msg.payload)
    assert np.array_equal(reply.tensors["y"], x * 2)  # type: ignore[union-attr]
    client.loop_stop()
    client.disconnect()


def test_mqtt311_client_is_answered_on_default_topic_by_id(
    broker: Broker, responder: Responder
) -> None:
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client = _client("cam-03", protocol=mqtt.MQTTv311)
    client.on_message = lambda c, u, m: got.put(m)
    _connect(client, broker)
    client.subscribe(infer_response_topic("cam-03"), qos=1)
    for i in range(3):
        payload = encode_mqtt_request("double", {"x": np.full(4, i, np.int64)}, id=f"r{i}")
        client.publish(infer_request_topic("cam-03"), payload, qos=1)
    answers = {}
    for _ in range(3):
        msg = got.get(timeout=5)
        assert parse_topic(msg.topic).kind is TopicKind.INFER_RESPONSE
        reply = decode_mqtt_response(msg.payload)
        answers[reply.response.id] = reply.tensors["y"].tolist()  # type: ignore[union-attr]
    assert answers == {f"r{i}": [2 * i] * 4 for i in range(3)}
    client.loop_stop()
    client.disconnect()


def test_bad_payload_gets_an_error_reply_and_the_responder_keeps_serving(
    broker: Broker, responder: Responder
) -> None:
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client = _client("cam-04", protocol=mqtt.MQTTv311)
    client.on_message = lambda c, u, m: got.put(m)
    _connect(client, broker)
    client.subscribe(infer_response_topic("cam-04"), qos=1)
    client.publish(infer_request_topic("cam-04"), b"HIB1\xff\xff\xff\x7f{}", qos=1)
    error = decode_mqtt_response(got.get(timeout=5).payload)
    assert "runs past the end" in error.error  # type: ignore[union-attr]
    client.publish(
        infer_request_topic("cam-04"),
        encode_mqtt_request("double", {"x": np.ones(2)}, id="ok"),
        qos=1,
    )
    reply = decode_mqtt_response(got.get(timeout=5).payload)
    assert reply.tensors["y"].tolist() == [2.0, 2.0]  # type: ignore[union-attr]
    assert responder.errors == 1
    client.loop_stop()
    client.disconnect()
