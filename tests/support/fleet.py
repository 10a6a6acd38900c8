"""Simulated devices for fleet tests and ``benchmarks/fleet.py``: MQTT 5 clients calling ``add_sub``.

Each device is its own paho client (client id ``sim-<device>``, username the device id, password
``pw-<device>``), sends requests at its rate on its own request topic with a Response Topic and
unique Correlation Data, and checks every answer against its own request: ``add_sub`` answers
``OUTPUT0 = INPUT0 + INPUT1``, and each request's ``INPUT0`` holds the device's index and the
request's sequence number, so an answer computed for another request is caught as wrong.

A device retries what is not final, with the same id and bytes: 429 and 503 answers after the
hub's ``retry_after_s`` (or an exponential backoff with jitter), 500 likewise, and a request
without an answer after ``resend_after_s``, doubling with each attempt. Kinds of device:

- ``normal``: unique ids, at its rate;
- ``reuse``: ids cycle through three values (``r0``, ``r1``, ``r2``) with new content each time,
  like two apps on one device, or a counter that restarts;
- ``flood``: sends at its rate without waiting, and does not retry what the hub refused.

    python -m tests.support.fleet spec.json result.json

runs a group of devices in this process (the benchmark starts a few such processes) and writes
the figures as JSON.
"""

from __future__ import annotations

import heapq
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols import MqttErrorResponse, decode_mqtt_response, encode_mqtt_request
from protocols.topics import infer_request_topic

Kind = Literal["normal", "reuse", "flood"]
MODEL = "add_sub"
ADDEND = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
TRANSIENT = frozenset({429, 500, 503})


@dataclass(frozen=True, kw_only=True)
class GroupSpec:
    """What one process runs; every device of the group has the same kind and rate."""

    host: str
    port: int
    devices: list[str]
    indexes: list[int]
    kind: Kind = "normal"
    rate_per_s: float = 1.0
    duration_s: float = 10.0
    resend_after_s: float = 2.0
    drain_s: float = 20.0
    """After ``duration_s``, how long to wait for the answers still missing."""
    start_at_s: float = 0.0
    """Wall-clock time to start sending (``time.time()``), so groups in several processes start
    together; 0 to start at once."""


@dataclass
class GroupResult:
    requests: int = 0
    """Distinct requests sent."""
    sends: int = 0
    """Publishes, retries included."""
    answered: int = 0
    wrong: int = 0
    final_errors: int = 0
    transient: dict[str, int] = field(default_factory=dict)
    """Transient answers (429, 500, 503) by status; each was retried, except by a flood."""
    lost: int = 0
    """Requests without a final answer at the end (for a flood: refused and not retried are
    not lost)."""
    latencies_s: list[float] = field(default_factory=list)
    """First send to final answer, per answered request."""
    elapsed_s: float = 0.0

    def merge(self, other: GroupResult) -> None:
        self.requests += other.requests
        self.sends += other.sends
        self.answered += other.answered
        self.wrong += other.wrong
        self.final_errors += other.final_errors
        for status, n in other.transient.items():
            self.transient[status] = self.transient.get(status, 0) + n
        self.lost += other.lost
        self.latencies_s += other.latencies_s
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)


@dataclass
class _Pending:
    request_id: str
    payload: bytes
    expected: np.ndarray[Any, Any]
    first_s: float
    last_s: float
    retry_at_s: float | None = None
    attempts: int = 0


class SimulatedDevice:
    def __init__(self, spec: GroupSpec, device_id: str, index: int, result: GroupResult) -> None:
        self.spec = spec
        self.device_id = device_id
        self.index = index
        self.result = result
        self.lock = threading.Lock()
        self.pending: dict[bytes, _Pending] = {}
        self.seq = 0
        self.reply_topic = f"replies/{device_id}"
        self.topic = infer_request_topic(device_id)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sim-{device_id}", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(device_id, f"pw-{device_id}")
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(self.reply_topic, qos=1)

    def connect(self) -> None:
        self.client.connect(self.spec.host, self.spec.port, keepalive=30)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def send_new(self, now_s: float) -> None:
        self.seq += 1
        seq = self.seq
        request_id = f"r{seq % 3}" if self.spec.kind == "reuse" else f"{self.device_id}-{seq}"
        a = np.array([[self.index, seq, seq % 7, 0]], np.float32)
        payload = encode_mqtt_request(MODEL, {"INPUT0": a, "INPUT1": ADDEND}, id=request_id)
        correlation = f"{seq}".encode()
        pending = _Pending(request_id, payload, a + ADDEND, now_s, now_s)
        with self.lock:
            self.result.requests += 1
            self.pending[correlation] = pending
        self._publish(correlation, pending)

    def _publish(self, correlation: bytes, pending: _Pending) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = correlation
        pending.attempts += 1
        with self.lock:
            self.result.sends += 1
        self.client.publish(self.topic, pending.payload, qos=1, properties=props)

    def resend_due(self, now_s: float) -> None:
        if self.spec.kind == "flood":
            return
        with self.lock:
            due = [
                (c, p)
                for c, p in self.pending.items()
                if (p.retry_at_s is not None and now_s >= p.retry_at_s)
                or (p.retry_at_s is None and now_s - p.last_s >= self._resend_after_s(p))
            ]
            for _, p in due:
                p.last_s = now_s
                p.retry_at_s = None
        for correlation, pending in due:
            self._publish(correlation, pending)

    def _resend_after_s(self, pending: _Pending) -> float:
        """``resend_after_s`` doubling with each attempt (at most 8 times it): a slow hub is not
        sent the same request again and again."""
        return self.spec.resend_after_s * 2 ** min(pending.attempts - 1, 3)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now_s = time.monotonic()
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self.lock:
            pending = self.pending.get(correlation) if correlation else None
            if pending is None:
                return  # a second answer to a retried request: already counted
            try:
                reply = decode_mqtt_response(msg.payload)
            except ValueError:
                self.result.wrong += 1
                del self.pending[correlation]
                return
            if isinstance(reply, MqttErrorResponse):
                status = reply.status or 500
                if status in TRANSIENT:
                    key = str(status)
                    self.result.transient[key] = self.result.transient.get(key, 0) + 1
                    if self.spec.kind == "flood":
                        del self.pending[correlation]
                        return
                    backoff_s = min(2.0, 0.05 * 2 ** min(pending.attempts, 6))
                    wait_s = reply.retry_after_s if reply.retry_after_s else backoff_s
                    pending.retry_at_s = now_s + wait_s * random.uniform(1.0, 1.5)
                    return
                self.result.final_errors += 1
                del self.pending[correlation]
                return
            del self.pending[correlation]
            got = reply.tensors.get("OUTPUT0")
            if (
                reply.response.id != pending.request_id
                or got is None
                or not np.array_equal(got, pending.expected)
            ):
                self.result.wrong += 1
                return
            self.result.answered += 1
            self.result.latencies_s.append(now_s - pending.first_s)


def run_group(spec: GroupSpec) -> GroupResult:
    """Connect every device, send for ``duration_s``, wait up to ``drain_s`` for the rest."""
    result = GroupResult()
    devices = [
        SimulatedDevice(spec, d, i, result)
        for d, i in zip(spec.devices, spec.indexes, strict=False)
    ]
    for device in devices:
        device.connect()
    for device in devices:
        if not device.subscribed.wait(30):
            raise RuntimeError(f"{device.device_id} could not subscribe")
    if spec.start_at_s:
        time.sleep(max(0.0, spec.start_at_s - time.time()))
    start_s = time.monotonic()
    end_s = start_s + spec.duration_s
    interval_s = 1.0 / spec.rate_per_s
    rng = random.Random(spec.indexes[0] if spec.indexes else 0)
    schedule = [(start_s + rng.uniform(0, interval_s), i) for i in range(len(devices))]
    heapq.heapify(schedule)
    next_resend_s = start_s
    while True:
        now_s = time.monotonic()
        if now_s >= next_resend_s:
            for device in devices:
                device.resend_due(now_s)
            next_resend_s = now_s + 0.02
        if now_s >= end_s:
            break
        due_s, i = schedule[0]
        if due_s > now_s:
            time.sleep(min(due_s - now_s, max(0.0, next_resend_s - now_s)))
            continue
        devices[i].send_new(now_s)
        heapq.heapreplace(schedule, (due_s + interval_s, i))
    drain_end_s = time.monotonic() + spec.drain_s
    while time.monotonic() < drain_end_s:
        if all(not d.pending for d in devices):
            break
        now_s = time.monotonic()
        for device in devices:
            device.resend_due(now_s)
        time.sleep(0.02)
    result.elapsed_s = time.monotonic() - start_s
    for device in devices:
        with device.lock:
            result.lost += len(device.pending) if spec.kind != "flood" else 0
        device.close()
    return result


def main(argv: list[str]) -> int:
    spec = GroupSpec(**json.loads(Path(argv[1]).read_text()))
    result = run_group(spec)
    Path(argv[2]).write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
