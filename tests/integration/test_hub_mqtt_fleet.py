"""The MQTT bridge on a real fleet: request identity, transient errors, memory bound, fairness.

Real Mosquitto and real ``cloud-hub serve`` processes; devices are paho clients.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols import (
    MqttErrorResponse,
    decode_mqtt_response,
    encode_mqtt_request,
    infer_request_topic,
)
from tests.integration.test_hub_mqtt import Device, counter, inference_count, metrics, start_hub
from tests.support import onnx_models
from tests.support.broker import Broker
from tests.support.fleet import GroupResult, GroupSpec, run_group
from tests.support.hub import HubProcess, add_model

pytestmark = pytest.mark.integration

StartHub = Callable[..., HubProcess]
WIDE = 1000  # add_sub_wide: FP32 [batch, 1000], so OUTPUT0 alone is a 4,000-byte answer


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    add_model(
        repo,
        "add_sub",
        {
            "backend": "onnxruntime",
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_us": 500},
        },
        onnx_models.add_sub,
    )
    add_model(
        repo,
        "tiny_queue",
        # A request of 3 rows waits half a second for company that cannot fit beside it (3 + 3
        # rows > 4), so the requests behind it stay queued and the third finds the queue full.
        {
            "backend": "onnxruntime",
            "max_batch_size": 4,
            "dynamic_batching": {"max_queue_delay_us": 500_000, "max_queue_size": 2},
        },
        onnx_models.add_sub,
    )
    add_model(
        repo,
        "add_sub_wide",
        {
            "backend": "onnxruntime",
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_us": 1000},
        },
        lambda path: onnx_models.add_sub(path, width=WIDE),
    )
    return repo


@pytest.fixture
def hub_on(repository: Path, tmp_path: Path) -> Iterator[StartHub]:
    started: list[HubProcess] = []

    def start(broker: Broker, **mqtt_settings: object) -> HubProcess:
        workdir = tmp_path / f"hub{len(started)}"
        workdir.mkdir()
        hub = start_hub(repository, workdir, broker, **mqtt_settings)
        started.append(hub)
        return hub

    yield start
    for hub in started:
        hub.stop()


def rr(broker: Broker, device: str, request: dict[str, object]) -> dict[str, object]:
    """One request through ``mosquitto_rr``, as a user would send it."""
    binary = shutil.which("mosquitto_rr")
    if binary is None:
        pytest.fail("mosquitto_rr is missing: apt-get install mosquitto-clients")
    out = subprocess.run(
        [
            binary,
            "-V",
            "5",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            infer_request_topic(device),
            "-e",
            f"replies/{device}",
            "-m",
            json.dumps(request),
            "-W",
            "10",
        ],
        capture_output=True,
        check=True,
        timeout=15,
    )
    return dict(json.loads(out.stdout))


def digit_request(values: list[float]) -> dict[str, object]:
    return {
        "model_name": "add_sub",
        "id": "r1",
        "inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": values},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]},
        ],
    }


def test_mosquitto_rr_requests_reusing_an_id_get_their_own_answers(
    broker: Broker, hub_on: StartHub
) -> None:
    hub = hub_on(broker)
    first = rr(broker, "rr-cam", digit_request([3, 3, 3, 3]))
    second = rr(broker, "rr-cam", digit_request([7, 7, 7, 7]))
    assert first["id"] == second["id"] == "r1"
    assert first["outputs"][0]["data"] == [3, 3, 3, 3]  # type: ignore[index]
    assert second["outputs"][0]["data"] == [7, 7, 7, 7], "the second got the first's answer"  # type: ignore[index]
    runs = inference_count(hub)
    duplicates = counter(hub, 'hub_mqtt_requests_total{outcome="duplicate"}')
    # The very same request again (same id, same bytes) is a repeat: answered from the record.
    again = rr(broker, "rr-cam", digit_request([3, 3, 3, 3]))
    assert again["outputs"][0]["data"] == [3, 3, 3, 3]  # type: ignore[index]
    assert inference_count(hub) == runs
    assert counter(hub, 'hub_mqtt_requests_total{outcome="duplicate"}') == duplicates + 1


def test_a_full_queue_answers_503_and_retries_get_the_real_answer(
    broker: Broker, hub_on: StartHub
) -> None:
    hub = hub_on(broker)
    device = Device(broker, "busy-cam")
    try:
        payloads = {
            f"q{i}": encode_mqtt_request(
                "tiny_queue",
                {
                    "INPUT0": np.full((3, 4), i, np.float32),
                    "INPUT1": np.ones((3, 4), np.float32),
                },
                id=f"q{i}",
            )
            for i in range(8)
        }
        for payload in payloads.values():
            device.send(payload)
        answers: dict[str, float] = {}
        busy: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while len(answers) < len(payloads):
            assert time.monotonic() < deadline, (answers, busy)
            reply = decode_mqtt_response(device.next(timeout_s=10).payload)
            if isinstance(reply, MqttErrorResponse):
                assert reply.status == 503, reply
                assert reply.id is not None
                busy[reply.id] = busy.get(reply.id, 0) + 1
                time.sleep(0.1)
                device.send(payloads[reply.id])  # the same id and bytes: a retry
                continue
            request_id = reply.response.id
            assert request_id is not None
            answers[request_id] = float(reply.tensors["OUTPUT0"][0, 0])
        assert busy, "the queue never filled: the test proves nothing"
        assert answers == {f"q{i}": i + 1.0 for i in range(8)}
        assert inference_count(hub, "tiny_queue") == 8 * 3, "each request (3 rows) ran once"
        assert counter(hub, 'hub_mqtt_requests_total{outcome="duplicate"}') == 0
    finally:
        device.close()


def test_a_repeat_of_a_request_still_running_joins_it(broker: Broker, hub_on: StartHub) -> None:
    hub = hub_on(broker)
    device = Device(broker, "retry-cam")
    try:
        a = np.full((1, 4), 5, np.float32)
        payload = encode_mqtt_request("tiny_queue", {"INPUT0": a, "INPUT1": a}, id="slow-1")
        device.send(payload)
        device.send(payload)  # a retry while the first waits half a second for its batch
        device.send(payload)
        replies = [decode_mqtt_response(device.next().payload) for _ in range(3)]
        for reply in replies:
            assert not isinstance(reply, MqttErrorResponse), reply
            assert reply.response.id == "slow-1"
            assert float(reply.tensors["OUTPUT0"][0, 0]) == 10.0
        assert inference_count(hub, "tiny_queue") == 1, "three sends, one execution"
        assert counter(hub, 'hub_mqtt_requests_total{outcome="joined"}') == 2
    finally:
        device.close()


def rss_bytes(hub: HubProcess) -> int:
    assert hub.process is not None
    for line in Path(f"/proc/{hub.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def pipeline(broker: Broker, count: int, *, window: int = 256, start: int = 0) -> None:
    """``count`` distinct requests to add_sub_wide, ``window`` at once, each answer 4 KB."""
    done = threading.Semaphore(window)
    finished = threading.Event()
    answered = [0]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bulk", protocol=mqtt.MQTTv5)

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        assert msg.payload.startswith(b"HIB1"), msg.payload[:200]
        answered[0] += 1
        done.release()
        if answered[0] == count:
            finished.set()

    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe("replies/bulk", qos=1)
    assert subscribed.wait(5)
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = "replies/bulk"
    zeros = np.zeros((1, WIDE), np.float32)
    try:
        for i in range(start, start + count):
            done.acquire()
            x = np.full((1, WIDE), i, np.float32)
            payload = encode_mqtt_request(
                "add_sub_wide",
                {"INPUT0": x, "INPUT1": zeros},
                id=f"m{i}",
                outputs=["OUTPUT0"],
                binary=True,
                binary_outputs=True,
            )
            client.publish(infer_request_topic(f"bulk-{i % 64}"), payload, qos=1, properties=props)
        assert finished.wait(120), f"{answered[0]} of {count} answered"
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.slow
def test_the_record_stays_under_its_byte_bound(broker: Broker, hub_on: StartHub) -> None:
    bound = 32 * 1024 * 1024
    hub = hub_on(broker, device_rate_per_s=None, dedup_max_bytes=bound)
    pipeline(broker, 5_000)  # warm up: allocator pools, paho buffers, the model's arenas
    before = rss_bytes(hub)
    pipeline(broker, 100_000, start=5_000)
    grown = rss_bytes(hub) - before
    held = counter(hub, "hub_mqtt_dedup_bytes")
    assert 0.9 * bound <= held <= bound, held
    assert counter(hub, 'hub_mqtt_dedup_evicted_total{reason="bytes"}') > 50_000
    assert grown <= 1.2 * bound, f"RSS grew {grown / 2**20:.1f} MiB for a {bound / 2**20} MiB bound"


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def test_a_flooding_device_does_not_hurt_the_others(broker: Broker, hub_on: StartHub) -> None:
    rate, burst = 10.0, 10
    hub = hub_on(broker, device_rate_per_s=rate, device_burst=burst)
    duration_s = 12.0
    quiet = GroupSpec(
        host=broker.host,
        port=broker.port,
        devices=[f"quiet-{i:02d}" for i in range(50)],
        indexes=list(range(50)),
        rate_per_s=4.0,
        duration_s=duration_s,
    )
    base = run_group(quiet)
    flood_results: list[GroupResult] = []
    flood = GroupSpec(
        host=broker.host,
        port=broker.port,
        devices=["flooder"],
        indexes=[99],
        kind="flood",
        rate_per_s=20 * rate,
        duration_s=duration_s + 2,
    )
    flooder = threading.Thread(target=lambda: flood_results.append(run_group(flood)))
    flooder.start()
    time.sleep(1.0)
    under = run_group(quiet)
    flooder.join()
    # A second baseline after the flood brackets it, so a change in the machine's own load
    # during the test (two shared cores) is not taken for the flood's doing.
    after = run_group(quiet)
    flood_result = flood_results[0]
    for run in (base, under, after):
        assert run.wrong == 0
        assert run.lost == 0
        assert run.final_errors == 0
        assert run.transient == {}, run.transient
        assert run.answered == run.requests
    assert flood_result.transient.get("429", 0) > 0.8 * flood_result.requests
    assert flood_result.wrong == 0
    limited = counter(hub, 'hub_mqtt_rate_limited_total{reason="rate"}')
    assert limited == flood_result.transient["429"]
    # The quiet devices keep their pace: their median stays within twice the baselines'. Their
    # p99 only has to stay far from starvation (an unlimited flood queues them for seconds): on
    # two shared cores the flood's own CPU moves the tail from run to run (CI once saw 157 ms
    # under the flood against 16 and 5 ms around it, with the 429s all in place).
    median = float(np.median(under.latencies_s))
    without = max(float(np.median(base.latencies_s)), float(np.median(after.latencies_s)))
    tail = (
        f"p50/p99 {median * 1e3:.2f}/{p99(under.latencies_s) * 1e3:.2f} ms under the flood vs "
        f"{np.median(base.latencies_s) * 1e3:.2f}/{p99(base.latencies_s) * 1e3:.2f} ms before and "
        f"{np.median(after.latencies_s) * 1e3:.2f}/{p99(after.latencies_s) * 1e3:.2f} ms after it"
    )
    assert median <= 2.0 * without, f"{tail}; {metrics(hub)}"
    assert p99(under.latencies_s) <= 0.5, f"{tail}; {metrics(hub)}"
