"""A storm of malformed MQTT payloads at the hub's bridge, with good requests in between.

Random bytes, cut and corrupted ``HIB1`` frames, JSON of the wrong shape, payloads over the
limit, device ids the rules refuse: each bad message must be counted as ``malformed``, answered
with ``{"error": ...}`` where it names a Response Topic, and never stop the bridge; every good
request, during and after the storm, gets its own correct answer. The hub's RSS is measured
before and after.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols import (
    DEFAULT_LIMITS,
    ProtocolError,
    decode_mqtt_request,
    decode_mqtt_response,
    encode_mqtt_request,
)
from tests.reliability.conftest import record, sized
from tests.reliability.rss import rss_bytes
from tests.support.broker import Broker
from tests.support.fallback import hub_metric, wait_hub_connected
from tests.support.hub import HubProcess

pytestmark = pytest.mark.integration

PAYLOAD_MAX_BYTES = 65_536
LIMITS = dataclasses.replace(DEFAULT_LIMITS, payload_max_bytes=PAYLOAD_MAX_BYTES)


class Requester:
    """An MQTT 5 client that publishes with a Response Topic and Correlation Data and keeps
    every reply by correlation."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.reply_topic = f"replies/{name}"
        self.replies: dict[bytes, list[bytes]] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(self.reply_topic, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        key = getattr(msg.properties, "CorrelationData", None) or b""
        with self.lock:
            self.replies.setdefault(bytes(key), []).append(bytes(msg.payload))

    def publish(
        self, topic: str, payload: bytes, correlation: bytes | None
    ) -> mqtt.MQTTMessageInfo:
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = correlation
        return self.client.publish(topic, payload, qos=1, properties=props)

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.replies.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def good_request(i: int) -> bytes:
    return encode_mqtt_request(
        "add_sub",
        {"INPUT0": np.full((1, 4), i, np.float32), "INPUT1": np.ones((1, 4), np.float32)},
        id=f"g{i}",
        binary=bool(i % 2),
    )


def bad_payload(rng: random.Random, i: int) -> bytes:
    """One malformed payload of a kind chosen by ``i``."""
    kind = i % 8
    if kind == 0:
        return rng.randbytes(rng.randint(0, 300))
    if kind == 1:  # a binary frame cut short
        frame = encode_mqtt_request("add_sub", {"INPUT0": np.ones((1, 4), np.float32)}, binary=True)
        return frame[: rng.randint(0, len(frame) - 1)]
    if kind == 2:  # corrupted bytes
        data = bytearray(
            encode_mqtt_request("add_sub", {"x": np.ones((2, 4), np.float32)}, binary=True)
        )
        for _ in range(4):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)  # the few that still decode are not sent
    if kind == 3:
        return (
            b'{"model_name": "add_sub", "inputs": [{"name": "INPUT0", "shape": [1, 4], '
            b'"datatype": "FP99", "data": [1, 2, 3, 4]}]}'
        )
    if kind == 4:
        return json.dumps(
            {
                "model_name": "add_sub",
                "inputs": [{"name": "I", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}],
            }
        ).encode()
    if kind == 5:
        return b"{" * rng.randint(1, 5000)
    if kind == 6:  # over the payload limit
        return b"{" + b" " * PAYLOAD_MAX_BYTES
    return json.dumps({"inputs": "no model named", "id": i}).encode()


def _wait_for(condition: Callable[[], bool], hub: HubProcess, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert hub.process is not None
        assert hub.process.poll() is None, hub.log
        assert time.monotonic() < deadline, "the hub stopped answering"
        time.sleep(0.005)


def test_malformed_payload_storm(repository: Path, broker: Broker, tmp_path: Path) -> None:
    total_bad, total_good = sized(5000, 100_000), sized(250, 5000)
    hub = HubProcess(
        repository=repository,
        workdir=tmp_path,
        config={
            # No per-device rate limit: every bad message must reach the decoder and be counted.
            "mqtt": {"broker": broker.address, "device_rate_per_s": None},
            "limits": {"payload_max_bytes": PAYLOAD_MAX_BYTES},
        },
    )
    hub.start()
    try:
        wait_hub_connected(hub)
        assert hub.process is not None
        rss_before = rss_bytes(hub.process.pid)
        attacker = Requester(broker, "attacker")
        app = Requester(broker, "app")
        rng = random.Random(1)
        expected_malformed = with_reply = 0
        bad_topics = [
            "hybrid/v1/BAD DEVICE/infer/request",
            "hybrid/v1/" + "x" * 300 + "/infer/request",
        ]
        started = time.monotonic()
        for i in range(total_bad):
            if i % (total_bad // total_good) == 0:
                g = i // (total_bad // total_good)
                app.publish("hybrid/v1/app-device/infer/request", good_request(g), f"g{g}".encode())
            payload = bad_payload(rng, i)
            try:
                decode_mqtt_request(payload, limits=LIMITS)
            except ProtocolError:
                pass
            else:
                continue  # a corruption that left a valid request
            topic = (
                bad_topics[i % 2] if i % 50 == 0 else f"hybrid/v1/attacker-{i % 7}/infer/request"
            )
            correlation = f"b{i}".encode() if i % 3 else None
            expected_malformed += 1
            with_reply += correlation is not None
            attacker.publish(topic, payload, correlation)
            if i % 250 == 249:  # Mosquitto queues 1000 messages per client, then drops
                _wait_for(lambda n=with_reply: attacker.count() >= n - 500, hub)
        storm_s = time.monotonic() - started
        deadline = time.monotonic() + 120
        while attacker.count() < with_reply or app.count() < total_good:
            assert time.monotonic() < deadline, (
                f"{attacker.count()}/{with_reply} error replies, {app.count()}/{total_good} answers"
            )
            assert hub.process.poll() is None, hub.log
            time.sleep(0.1)
        # the bridge still serves after the storm
        app.publish("hybrid/v1/app-device/infer/request", good_request(total_good), b"after")
        deadline = time.monotonic() + 30
        while b"after" not in app.replies:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        wrong = 0
        for g in range(total_good + 1):
            key = b"after" if g == total_good else f"g{g}".encode()
            replies = app.replies.get(key, [])
            decoded = decode_mqtt_response(replies[0]) if len(replies) == 1 else None
            ok = (
                decoded is not None
                and not hasattr(decoded, "error")
                and np.array_equal(decoded.tensors["OUTPUT0"], np.full((1, 4), g + 1.0))
            )
            wrong += not ok
        errors_ok = sum(
            len(v) == 1 and isinstance(json.loads(v[0]).get("error"), str)
            for k, v in attacker.replies.items()
        )
        malformed = hub_metric(hub, 'hub_mqtt_requests_total{outcome="malformed"}')
        rss_after = rss_bytes(hub.process.pid)
        attacker.close()
        app.close()
        record(
            "mqtt_storm",
            malformed_sent=expected_malformed,
            malformed_counted=malformed,
            error_replies=errors_ok,
            error_replies_expected=with_reply,
            good_requests=total_good + 1,
            good_wrong_or_missing=wrong,
            storm_s=round(storm_s, 1),
            hub_rss_before_mb=round(rss_before / 2**20, 1),
            hub_rss_after_mb=round(rss_after / 2**20, 1),
        )
        assert hub.process.poll() is None
        assert malformed == expected_malformed
        assert errors_ok == with_reply
        assert wrong == 0
        assert rss_after - rss_before < 100 * 2**20
    finally:
        hub.stop()
