"""Soak: mixed traffic for a long time with periodic faults; memory and p99 latency at the start
and at the end.

Traffic: apps on the device calling the cloud model through the agent (MQTT, QoS 1, queued when
the cloud is out of reach), cloud apps calling the hub over HTTP, and a trickle of malformed MQTT
payloads. Faults, in turn every ``HYBRID_SOAK_FAULT_INTERVAL_S`` (60): the broker SIGKILLed and
restarted, the hub SIGKILLed and restarted, the agent's link cut at the proxy. Duration:
``HYBRID_SOAK_DURATION_S`` (the documented full run is 1800 s; 1800 under
``HYBRID_RELIABILITY_SCALE=full``, else 120). At the end every agent request must have exactly
one correct answer.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.errors import AgentError, QueuedError
from tests.reliability.conftest import record, sized
from tests.reliability.rss import rss_bytes
from tests.reliability.traffic import percentile_ms
from tests.support.broker import Broker
from tests.support.fallback import AgentProcess, hub_metric, wait_hub_connected
from tests.support.hub import HubProcess
from tests.support.proxy import LossyProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DURATION_S = float(os.environ.get("HYBRID_SOAK_DURATION_S", sized(120, 1800)))
FAULT_INTERVAL_S = float(os.environ.get("HYBRID_SOAK_FAULT_INTERVAL_S", 60))
WINDOW_S = min(60.0, DURATION_S / 4)
GOOD_HTTP = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]},
        ]
    }
).encode()


@dataclass
class Ledger:
    """Every agent request and what came back, with the time each call took."""

    answers: dict[str, float] = field(default_factory=dict)  # id -> OUTPUT0[0, 0]
    duplicates: int = 0
    wrong: int = 0
    failed: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    sent: int = 0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds)
    http_ok: int = 0
    http_refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, request_id: str, value: float) -> None:
        with self.lock:
            if request_id in self.answers:
                self.duplicates += 1
            self.answers[request_id] = value
            self.wrong += value != int(request_id.split("-")[1]) + 1


def test_soak(
    broker: Broker,
    hubs: Callable[[Broker], HubProcess],
    agents: Callable[..., AgentProcess],
) -> None:
    hub = hubs(broker)
    proxy = LossyProxy(broker.host, broker.port, delay_s=0.001, jitter_s=0.004, seed=3)
    proxy.start()
    agent = agents(proxy.address)
    ledger = Ledger()
    stop = threading.Event()
    counter = iter(range(10**9))
    counter_lock = threading.Lock()
    started = time.monotonic()

    def device_app() -> None:
        with agent.client(timeout_s=60) as client:
            while not stop.is_set():
                with counter_lock:
                    i = next(counter)
                request_id = f"k-{i}"
                inputs = {
                    "INPUT0": np.full((1, 4), i, np.float32),
                    "INPUT1": np.ones((1, 4), np.float32),
                }
                t0 = time.monotonic()
                try:
                    result = client.infer("add", inputs, request_id=request_id)
                except QueuedError:
                    with ledger.lock:
                        ledger.queued.append(request_id)
                    continue
                except AgentError as exc:
                    with ledger.lock:
                        ledger.failed.append(f"{request_id}: {exc}")
                    continue
                finally:
                    with ledger.lock:
                        ledger.sent += 1
                        ledger.samples.append((t0 - started, time.monotonic() - t0))
                ledger.answer(request_id, float(result.outputs["OUTPUT0"][0, 0]))
                time.sleep(0.01)

    def cloud_app() -> None:
        while not stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
                conn.request("POST", "/v2/models/add_sub/infer", body=GOOD_HTTP)
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            with ledger.lock:
                ledger.http_ok += ok
                ledger.http_refused += not ok
            time.sleep(0.02)

    def noise() -> None:
        rng = random.Random(5)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            while not stop.is_set():
                client.publish("hybrid/v1/noisy/infer/request", rng.randbytes(rng.randint(0, 200)))
                time.sleep(0.05)
        finally:
            client.disconnect()
            client.loop_stop()

    def kill_broker() -> None:
        assert broker.process is not None
        broker.process.kill()
        broker.process.wait()
        broker.start()

    def kill_hub() -> None:
        assert hub.process is not None
        hub.process.kill()
        hub.process.wait()
        hub.process = None
        hub.start()
        wait_hub_connected(hub)

    faults: list[tuple[str, Callable[[], object]]] = [
        ("broker", kill_broker),
        ("hub", kill_hub),
        ("link", proxy.cut_all),
    ]
    fired: list[str] = []
    threads = [threading.Thread(target=device_app) for _ in range(4)]
    threads += [threading.Thread(target=cloud_app) for _ in range(2)]
    memory: list[tuple[float, float, float]] = []  # (at, hub MB, agent MB)

    def sample_memory() -> None:
        assert hub.process is not None
        assert agent.process is not None
        memory.append(
            (
                round(time.monotonic() - started),
                round(rss_bytes(hub.process.pid) / 2**20, 1),
                round(rss_bytes(agent.process.pid) / 2**20, 1),
            )
        )

    for thread in threads:
        thread.start()
    noisy = threading.Thread(target=noise)  # paho reconnects it after a broker kill
    noisy.start()
    next_fault = started + FAULT_INTERVAL_S
    next_sample = started + WINDOW_S
    try:
        while time.monotonic() - started < DURATION_S:
            now = time.monotonic()
            if now >= next_sample:
                sample_memory()
                next_sample += WINDOW_S
            if now >= next_fault:
                name, fault = faults[len(fired) % len(faults)]
                fault()
                fired.append(name)
                next_fault += FAULT_INTERVAL_S
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
        noisy.join(10)
    sample_memory()
    with agent.client(timeout_s=60) as client:
        for request_id in ledger.queued:
            try:
                result = client.wait_result(request_id, timeout_s=300)
            except AgentError as exc:
                ledger.failed.append(f"{request_id}: {exc}")
                continue
            ledger.answer(request_id, float(result.outputs["OUTPUT0"][0, 0]))
    proxy.stop()

    first = [s for at, s in ledger.samples if at < WINDOW_S]
    last = [s for at, s in ledger.samples if at >= DURATION_S - WINDOW_S]
    sent = ledger.sent
    lost = sent - len(ledger.answers) - len(ledger.failed)
    record(
        "soak",
        duration_s=round(time.monotonic() - started),
        faults=len(fired),
        fault_kinds={k: fired.count(k) for k in sorted(set(fired))},
        agent_requests=sent,
        answered=len(ledger.answers),
        lost=lost,
        duplicated=ledger.duplicates,
        wrong=ledger.wrong,
        failed=len(ledger.failed),
        late_202=len(ledger.queued),
        http_ok=ledger.http_ok,
        http_refused_during_faults=ledger.http_refused,
        malformed_counted=hub_metric(hub, 'hub_mqtt_requests_total{outcome="malformed"}'),
        p99_first_window_ms=percentile_ms(first, 99),
        p99_last_window_ms=percentile_ms(last, 99),
        p50_first_window_ms=percentile_ms(first, 50),
        p50_last_window_ms=percentile_ms(last, 50),
        window_s=WINDOW_S,
        memory_mb=memory,
    )
    assert ledger.failed == []
    assert lost == 0
    assert ledger.duplicates == 0
    assert ledger.wrong == 0
    assert len(fired) >= int(DURATION_S // FAULT_INTERVAL_S) - 1
    # Memory: the hub restarts with the hub faults, so compare the agent's first and last sample.
    assert memory[-1][2] - memory[0][2] < 64
