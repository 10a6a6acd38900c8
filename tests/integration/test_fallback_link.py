"""The agent's cloud link in process, through a real Mosquitto, against a scripted responder: a
paho client in the hub's place that answers as told (at once, only repeats, twice, or never).

What is checked: the MQTT 5 properties of a request, resends with the same id, extra answers
dropped and counted, the breaker opening on timeouts and closing on a probe, the in-flight bound,
and answers kept by the broker in the agent's persistent session while it is away.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.cloud.breaker import BreakerState
from edge_agent.cloud.calls import CloudCall
from edge_agent.cloud.gateway import CloudGateway
from edge_agent.config import CloudConfig
from edge_agent.errors import CloudLinkError, CloudTimeoutError, CloudUnavailableError
from edge_agent.metrics import AgentMetrics
from edge_agent.reply import ReplyFormat
from protocols import (
    CONTENT_TYPE_FRAME,
    DeviceState,
    decode_mqtt_request,
    encode_mqtt_response,
    infer_response_topic,
    request_subscription,
)
from tests.support.broker import Broker

pytestmark = pytest.mark.integration

DEVICE = "link-device"
WAIT_S = 20.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


class Responder:
    """Plays the hub: answers each request (y = x + 1) according to ``mode``."""

    def __init__(self, broker: Broker) -> None:
        self.mode = "answer"
        self.received: list[mqtt.MQTTMessage] = []
        self.copies: collections.Counter[str] = collections.Counter()
        self.answers_sent = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(request_subscription(), qos=1)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        request = decode_mqtt_request(message.payload)
        request_id = request.request.id or ""
        with self._lock:
            self.received.append(message)
            self.copies[request_id] += 1
            copy = self.copies[request_id]
        if self.mode == "silent" or (self.mode == "drop_first" and copy == 1):
            return
        repeats = 2 if self.mode == "twice" else 1
        for _ in range(repeats):
            self.answer(message.properties.ResponseTopic, request_id, request.tensors["x"] + 1)

    def answer(self, topic: str, request_id: str, y: np.ndarray, *, wait: bool = False) -> None:
        """Publish an answer; ``wait`` for the broker's acknowledgement (not from a callback)."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = request_id.encode()
        payload = encode_mqtt_response({"y": y}, model_name="m", model_version="1", id=request_id)
        info = self.client.publish(topic, payload, qos=1, properties=props)
        if wait:
            info.wait_for_publish(5)
        with self._lock:
            self.answers_sent += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def responder(broker: Broker) -> Iterator[Responder]:
    r = Responder(broker)
    yield r
    r.close()


@pytest.fixture
def make_gateway(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., CloudGateway]]:
    gateways: list[CloudGateway] = []

    def make(**settings: Any) -> CloudGateway:
        config = CloudConfig.model_validate(
            {
                "broker": broker.address,
                "retry_interval_s": 0.2,
                "reconnect_min_s": 0.05,
                "telemetry_interval_s": 0,
                **settings,
            }
        )
        gateway = CloudGateway(
            config,
            device_id=DEVICE,
            data_dir=tmp_path / "data",
            metrics=AgentMetrics(),
            status=lambda state: (
                b'{"device_id": "%s", "state": "%s"}' % (DEVICE.encode(), state.value.encode())
            ),
        )
        gateways.append(gateway)
        gateway.start()
        assert gateway.link is not None
        assert gateway.link.wait_connected(5)
        return gateway

    yield make
    for gateway in gateways:
        gateway.stop()


def call(request_id: str, value: float = 1.0, deadline_s: float = 5.0) -> CloudCall:
    return CloudCall(
        request_id=request_id,
        model="m",
        version=None,
        inputs={"x": np.full((1, 3), value, np.float32)},
        outputs=None,
        deadline_s=deadline_s,
    )


def metric(gateway: CloudGateway, name: str, **labels: str) -> float:
    return gateway._metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_request_carries_its_id_reply_topic_and_expiry(
    make_gateway: Callable[..., CloudGateway], responder: Responder
) -> None:
    gateway = make_gateway()
    result = gateway.infer(call("r-1", 2.0, deadline_s=7.5))
    np.testing.assert_array_equal(result.outputs["y"], np.full((1, 3), 3.0))
    (message,) = responder.received
    props = message.properties
    assert message.qos == 1
    assert props.ResponseTopic == infer_response_topic(DEVICE)
    assert props.ContentType == CONTENT_TYPE_FRAME
    assert 1 <= props.MessageExpiryInterval <= math.ceil(7.5)
    decoded = decode_mqtt_request(message.payload)
    wire_id = decoded.request.id
    assert wire_id
    assert wire_id != "r-1"
    assert props.CorrelationData == wire_id.encode()
    assert decoded.request.model_name == "m"  # type: ignore[attr-defined]


def test_an_unanswered_request_is_sent_again_with_the_same_id(
    make_gateway: Callable[..., CloudGateway], responder: Responder
) -> None:
    responder.mode = "drop_first"
    gateway = make_gateway()
    result = gateway.infer(call("r-2", 5.0))
    np.testing.assert_array_equal(result.outputs["y"], np.full((1, 3), 6.0))
    first, second = responder.received[:2]
    assert first.payload == second.payload
    wire_id = decode_mqtt_request(first.payload).request.id
    assert wire_id
    assert wire_id != "r-2"
    assert first.properties.CorrelationData == second.properties.CorrelationData
    assert first.properties.CorrelationData == wire_id.encode()
    assert metric(gateway, "edge_agent_cloud_retries_total") >= 1


def test_extra_answers_are_dropped_and_counted(
    make_gateway: Callable[..., CloudGateway], responder: Responder
) -> None:
    responder.mode = "twice"
    gateway = make_gateway()
    results = [gateway.infer(call(f"r-{i}", i)) for i in range(3)]
    assert [float(r.outputs["y"][0, 0]) for r in results] == [1.0, 2.0, 3.0]
    # Every answer after the first for an id is dropped (a resend under load adds answers too).
    wait_until(
        lambda: (
            metric(gateway, "edge_agent_cloud_answers_dropped_total", reason="unknown")
            == responder.answers_sent - 3
            and responder.answers_sent >= 6
        ),
        "every answer but the first per id to be dropped",
    )


def test_timeouts_open_the_breaker_and_a_probe_closes_it(
    make_gateway: Callable[..., CloudGateway], responder: Responder
) -> None:
    responder.mode = "silent"
    gateway = make_gateway(breaker={"failures": 2, "cooldown_s": 0.5})
    for i in range(2):
        with pytest.raises(CloudTimeoutError):
            gateway.infer(call(f"t-{i}", deadline_s=0.3))
    assert gateway.breaker.state is BreakerState.OPEN
    sent = len(responder.received)
    with pytest.raises(CloudUnavailableError, match="breaker is open"):
        gateway.infer(call("t-fast"))
    assert len(responder.received) == sent  # failed fast: nothing was sent
    responder.mode = "answer"
    wait_until(lambda: gateway.breaker.state is BreakerState.HALF_OPEN, "the cool-down")
    gateway.infer(call("t-probe"))
    assert gateway.breaker.state is BreakerState.CLOSED
    assert metric(gateway, "edge_agent_cloud_requests_total", outcome="timeout") == 2
    assert metric(gateway, "edge_agent_cloud_requests_total", outcome="unavailable") == 1


def test_requests_in_flight_are_bounded(
    make_gateway: Callable[..., CloudGateway], responder: Responder
) -> None:
    responder.mode = "silent"
    gateway = make_gateway(max_in_flight=2, breaker={"failures": 100})
    timed_out: list[str] = []

    def hold(request_id: str) -> None:
        try:
            gateway.infer(call(request_id, deadline_s=3.0))
        except CloudTimeoutError:
            timed_out.append(request_id)

    holders = [threading.Thread(target=hold, args=(f"h-{i}",)) for i in range(2)]
    for thread in holders:
        thread.start()
    assert gateway.link is not None
    wait_until(
        lambda: gateway.link is not None and gateway.link.in_flight == 2, "two requests in flight"
    )
    with pytest.raises(CloudUnavailableError, match="2 cloud requests are already in flight"):
        gateway.infer(call("h-extra", deadline_s=0.2))
    for thread in holders:
        thread.join()
    assert sorted(timed_out) == ["h-0", "h-1"]


def test_answers_published_while_the_agent_is_away_wait_in_its_session(
    make_gateway: Callable[..., CloudGateway], responder: Responder
) -> None:
    responder.mode = "silent"
    first = make_gateway(session_expiry_s=300)
    first.enqueue(call("away-1", 4.0), ReplyFormat(model_name="m"))
    wait_until(lambda: len(responder.received) >= 1, "the queued request to be sent")
    wire_id = decode_mqtt_request(responder.received[0].payload).request.id
    assert wire_id
    first.stop()  # a clean disconnect: the broker keeps the session and its subscription
    responder.answer(
        infer_response_topic(DEVICE), wire_id, np.full((1, 3), 5.0, np.float32), wait=True
    )
    second = make_gateway(session_expiry_s=300)  # same client id and data dir
    wait_until(
        lambda: (stored := second.lookup("away-1")) is not None and stored.answer is not None,
        "the answer kept by the broker to arrive",
    )
    assert responder.answers_sent == 1  # the only answer there was: the one kept for the agent


def test_the_offline_status_is_published_on_a_clean_stop(
    make_gateway: Callable[..., CloudGateway], broker: Broker
) -> None:
    gateway = make_gateway()
    gateway.stop()
    seen: list[bytes] = []
    got = threading.Event()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_message = lambda c, u, m: (seen.append(m.payload), got.set())
    watcher.on_connect = lambda c, *a: c.subscribe(f"hybrid/v1/{DEVICE}/status", qos=1)
    watcher.connect(broker.host, broker.port)
    watcher.loop_start()
    try:
        assert got.wait(5)
        assert DeviceState.OFFLINE.value.encode() in seen[0]
    finally:
        watcher.disconnect()
        watcher.loop_stop()


# -- one request cannot kill the link ---------------------------------------------------------


def _failing_publish(
    link: Any, monkeypatch: pytest.MonkeyPatch, fails: Callable[[bytes], bool]
) -> None:
    """Make paho's publish raise for the requests ``fails`` picks (by their payload)."""
    real = link._client.publish

    def publish(topic: str, payload: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(payload, bytes) and topic == link.request_topic and fails(payload):
            raise RuntimeError("injected fault in publish")
        return real(topic, payload, *args, **kwargs)

    monkeypatch.setattr(link._client, "publish", publish)


def _x(payload: bytes) -> float:
    return float(decode_mqtt_request(payload).tensors["x"].flat[0])


def test_a_failure_to_send_fails_that_request_alone(
    make_gateway: Callable[..., CloudGateway],
    responder: Responder,
    broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A publish that raises fails its own request; the timer, the network thread and every
    later request go on, through a reconnect too. An app's id of any length never travels."""
    gateway = make_gateway()
    link = gateway.link
    assert link is not None
    _failing_publish(link, monkeypatch, lambda payload: _x(payload) == 13.0)
    with pytest.raises(CloudLinkError, match="injected fault"):
        gateway.infer(call("doomed", 13.0))
    assert link.in_flight == 0
    result = gateway.infer(call("after-1", 1.0))
    np.testing.assert_array_equal(result.outputs["y"], np.full((1, 3), 2.0))
    long_id = gateway.infer(call("x" * 65_536, 2.0))  # over what Correlation Data could carry
    np.testing.assert_array_equal(long_id.outputs["y"], np.full((1, 3), 3.0))
    responder.mode = "silent"
    with pytest.raises(CloudTimeoutError):
        gateway.infer(call("silent-1", deadline_s=0.3))
    assert link.in_flight == 0  # the timer ended it at its deadline
    responder.mode = "answer"
    broker.stop()
    wait_until(lambda: not link.connected, "the link to notice the broker is gone")
    broker.start()
    assert link.wait_connected(10)
    wait_until(responder.client.is_connected, "the responder to reconnect")
    time.sleep(0.2)  # and subscribe again (the broker keeps no sessions here)
    result = gateway.infer(call("after-reconnect", 3.0))
    np.testing.assert_array_equal(result.outputs["y"], np.full((1, 3), 4.0))
    assert metric(gateway, "edge_agent_cloud_link_errors_total", where="send") == 1
    health = link.health()
    assert health["errors"] == 1
    assert health["thread_restarts"] == 0
    assert health["last_round_trip_s"] is not None
    assert health["last_answer_age_s"] < 5


def test_a_failure_in_the_timer_is_survived(
    make_gateway: Callable[..., CloudGateway], responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = make_gateway()
    link = gateway.link
    assert link is not None
    responder.mode = "silent"
    real_clock = link._clock
    calls = {"n": 0}

    def clock_failing_once() -> float:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected fault in the timer")
        return real_clock()

    monkeypatch.setattr(link, "_clock", clock_failing_once)
    with pytest.raises(CloudTimeoutError):
        gateway.infer(call("timer-1", deadline_s=0.5))
    wait_until(lambda: link.in_flight == 0, "the deadline to end the request")
    assert metric(gateway, "edge_agent_cloud_link_errors_total", where="timer") == 1
    responder.mode = "answer"
    assert gateway.infer(call("timer-2")).outputs["y"][0, 0] == 2.0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_watchdog_restarts_a_dead_network_thread(
    make_gateway: Callable[..., CloudGateway], responder: Responder
) -> None:
    """A callback outside the link's guard (here paho's ``on_subscribe``) raising kills paho's
    network thread; the watchdog starts it again and requests are answered."""
    gateway = make_gateway()
    link = gateway.link
    assert link is not None

    def boom(*args: Any) -> None:
        raise RuntimeError("injected fault in paho's thread")

    link._client.on_subscribe = boom
    link.add_subscription("hybrid/v1/fleet/test/models", lambda payload: None)
    wait_until(
        lambda: metric(gateway, "edge_agent_cloud_link_restarts_total", thread="network") >= 1,
        "the watchdog to restart paho's thread",
    )
    link._client.on_subscribe = None
    assert link.wait_connected(10)
    result = gateway.infer(call("after-restart", 5.0))
    np.testing.assert_array_equal(result.outputs["y"], np.full((1, 3), 6.0))
    assert link.health()["thread_restarts"] >= 1


def test_a_queued_request_that_keeps_failing_becomes_a_dead_letter(
    make_gateway: Callable[..., CloudGateway],
    responder: Responder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = make_gateway(outbox={"max_failures": 2})
    assert gateway.link is not None
    _failing_publish(gateway.link, monkeypatch, lambda payload: _x(payload) == 13.0)
    bad = "bad-1"
    gateway.enqueue(call(bad, 13.0), ReplyFormat(model_name="m"))
    gateway.enqueue(call("good-1", 7.0), ReplyFormat(model_name="m"))
    wait_until(
        lambda: (queued := gateway.lookup(bad)) is not None and queued.state == "dead",
        "the failing request to become a dead letter",
    )
    queued = gateway.lookup(bad)
    assert queued is not None
    assert queued.answered
    assert isinstance(queued.error, CloudLinkError)
    assert "injected fault" in str(queued.error)
    wait_until(
        lambda: metric(gateway, "edge_agent_outbox_dead_letters_total") == 1,
        "the dead letter count",
    )
    wait_until(
        lambda: (good := gateway.lookup("good-1")) is not None and good.answer is not None,
        "the good request to be answered meanwhile",
    )
    detail = gateway.detail()
    assert detail["outbox"]["dead"] == 1
    assert detail["outbox"]["requests"] == 0
    assert all(_x(m.payload) != 13.0 for m in responder.received)  # never published


def test_copies_of_an_unanswered_request_back_off(
    make_gateway: Callable[..., CloudGateway], responder: Responder
) -> None:
    """retry_interval_s 0.2 and a 3 s deadline: copies at 0, 0.2, 0.6, 1.4 and 3.0 s at most,
    not one every 0.2 s (15)."""
    responder.mode = "silent"
    gateway = make_gateway()
    with pytest.raises(CloudTimeoutError):
        gateway.infer(call("backoff-1", deadline_s=3.0))
    (copies,) = responder.copies.values()  # one wire id, however many copies
    assert 3 <= copies <= 5


def test_a_large_request_is_not_sent_again_while_its_copy_is_on_its_way(
    make_gateway: Callable[..., CloudGateway], responder: Responder
) -> None:
    """A 48 MB request takes longer to reach the broker, and the hub to answer, than
    retry_interval_s (0.05 s here): its copies wait for its size too, so the hub sees it about
    once, not once every 0.05 s."""
    gateway = make_gateway(retry_interval_s=0.05)
    big = CloudCall(
        request_id="big-1",
        model="m",
        version=None,
        inputs={"x": np.ones((4_000_000, 3), np.float32)},
        outputs=None,
        deadline_s=20.0,
    )
    result = gateway.infer(big)
    assert result.outputs["y"].shape == (4_000_000, 3)
    assert sum(responder.copies.values()) <= 2
