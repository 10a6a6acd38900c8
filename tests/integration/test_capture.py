"""Capture through real processes: Mosquitto, ``cloud-hub serve`` with its MQTT bridge and a
model that captures, and two ``edge-agent run`` devices, one of which opted out.

Every digit falls back (threshold 1.0), so each request reaches the hub with the device's report;
the hub keeps the first device's and none of the second's, and each record holds the request's
pixels, the cloud's answer the agent returned, and the device's own top class and confidence.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.capture import read_shard
from tests.support.broker import Broker
from tests.support.fallback import AgentProcess, start_mqtt_hub
from tests.support.hub import HubProcess
from tests.support.models import (
    DIGITS_INPUT,
    DIGITS_OUTPUT,
    DigitsModels,
    ensure_digits_models,
    require,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits() -> DigitsModels:
    return require(ensure_digits_models)  # type: ignore[no-any-return]


@pytest.fixture
def hub(digits: DigitsModels, broker: Broker, tmp_path: Path) -> Iterator[HubProcess]:
    folder = tmp_path / "repo" / "cloud_digits"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.tflite").symlink_to(digits.model("fp32"))
    (folder / "config.yaml").write_text(
        "backend: tflite\nmax_batch_size: 64\ncapture: {shard_records: 1000}\n"
    )
    process = start_mqtt_hub(tmp_path / "repo", tmp_path / "hub", broker)
    yield process
    process.stop()


def _agent(
    tmp_path: Path, digits: DigitsModels, broker: Broker, device: str, **extra: Any
) -> AgentProcess:
    agent = AgentProcess(
        workdir=tmp_path / device,
        config={
            "device_id": device,
            "device_class": "cam",
            "models": [
                {
                    "name": "digits",
                    "path": str(digits.model("int8")),
                    "version": "4",
                    "fallback": {
                        "policy": "on_low_confidence",
                        "threshold": 1.0,
                        "cloud_model": "cloud_digits",
                    },
                }
            ],
            "cloud": {"broker": broker.address, "telemetry_interval_s": 0},
            **extra,
        },
    )
    agent.start()
    return agent


def _get(hub: HubProcess, path: str, method: str = "GET") -> bytes:
    request = urllib.request.Request(f"http://{hub.url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=10) as reply:
        return bytes(reply.read())


def test_fallbacks_are_captured_with_their_answers_and_an_opted_out_device_gives_none(
    tmp_path: Path, digits: DigitsModels, broker: Broker, hub: HubProcess
) -> None:
    x, _ = digits.data()
    edge_reference = digits.reference("int8")
    agents = {
        "cam-in": _agent(tmp_path, digits, broker, "cam-in"),
        "cam-out": _agent(tmp_path, digits, broker, "cam-out", capture_opt_out=True),
    }
    answers: dict[str, np.ndarray] = {}
    try:
        for device, agent in agents.items():
            with agent.client() as client:
                for i in range(12):
                    result = client.infer(
                        "digits", {DIGITS_INPUT: x[i : i + 1]}, request_id=f"{device}-{i}"
                    )
                    assert result.served_by == "cloud"
                    answers[f"{device}-{i}"] = result.outputs[DIGITS_OUTPUT]
    finally:
        for agent in agents.values():
            agent.stop()
    _get(hub, "/v1/capture/flush", method="POST")
    listed = json.loads(_get(hub, "/v1/capture/shards?model=cloud_digits"))
    shards = [
        read_shard(_get(hub, f"/v1/capture/shards/cloud_digits/{s['shard']}"))
        for s in listed["shards"]
    ]
    records = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}
    # The hub sees the agent's wire ids (an app's id never leaves its device): 12 distinct ones.
    wire_ids = [str(r) for r in records["request_id"]]
    assert len(set(wire_ids)) == 12
    assert not set(wire_ids) & {f"cam-in-{i}" for i in range(12)}
    assert set(records["device_id"]) == {"cam-in"}
    assert set(records["device_class"]) == {"cam"}
    assert set(records["device_model_version"]) == {"4"}
    assert set(records["fallback_reason"]) == {"low_confidence"}
    seen = set()
    for row in range(len(wire_ids)):
        # Each record's input is one of the 12 sent; its output is the answer that request got.
        (i,) = [j for j in range(12) if np.array_equal(records[f"input.{DIGITS_INPUT}"][row], x[j])]
        seen.add(i)
        np.testing.assert_array_equal(
            records[f"output.{DIGITS_OUTPUT}"][row], answers[f"cam-in-{i}"][0]
        )
        assert records["device_top_class"][row] == int(edge_reference[i].argmax())
        assert records["device_confidence"][row] == pytest.approx(
            float(edge_reference[i].max()), abs=0.01
        )
    assert seen == set(range(12))
    metrics = _get(hub, "/metrics").decode()
    assert 'hub_capture_records_total{model="cloud_digits",outcome="stored"} 12.0' in metrics
    assert 'hub_capture_records_total{model="cloud_digits",outcome="opted_out"} 12.0' in metrics
