"""The edge agent as aarch64 (emulated by qemu-user-static), against the x86-64 host: the same
answers as the host's interpreter, and a fallback over MQTT to the host's hub.

Emulation checks correctness, not speed: nothing here is timed."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from tests.arm64.userland import ChrootAgent, Userland
from tests.support.broker import Broker
from tests.support.fallback import fallback_repository, start_mqtt_hub
from tests.support.hub import HubProcess
from tests.support.models import (
    DIGITS_INPUT,
    DIGITS_KINDS,
    DIGITS_OUTPUT,
    DigitsModels,
    output_scale,
    run_model_directly,
)

pytestmark = pytest.mark.integration

HOST_RUNTIME = "ai_edge_litert"
SAMPLES = 48
THRESHOLD = 0.9
MARGIN = 0.02
"""Digits whose int8 confidence is within this of the threshold are left out of the fallback
test: one quantization step may tip them either way."""


@pytest.fixture
def agents(userland: Userland) -> Iterator[list[ChrootAgent]]:
    started: list[ChrootAgent] = []
    yield started
    for agent in started:
        agent.stop()


def start_agent(
    userland: Userland, started: list[ChrootAgent], folder: PurePosixPath, config: dict[str, object]
) -> ChrootAgent:
    agent = ChrootAgent(userland=userland, workdir=folder, config=config)
    started.append(agent)
    agent.start()
    return agent


def test_the_userland_runs_aarch64_with_the_light_edge_install(userland: Userland) -> None:
    out = userland.run(
        "python",
        "-c",
        "import importlib.util, platform, ai_edge_litert, edge_agent\n"
        "heavy = [m for m in ('tensorflow', 'fastapi', 'onnxruntime', 'qiskit') "
        "if importlib.util.find_spec(m)]\n"
        "print(platform.machine(), edge_agent.__file__, heavy)",
    )
    machine, location, heavy = out.split(maxsplit=2)
    assert machine == "aarch64"
    assert platform.machine() != "aarch64"  # the host is another architecture
    assert location == "/src/edge_agent/__init__.py"  # the working tree's code
    assert heavy.strip() == "[]"


def test_fp32_fp16_and_int8_answers_equal_the_x86_interpreter(
    userland: Userland, digits: DigitsModels, agents: list[ChrootAgent]
) -> None:
    folder = userland.workdir("answers")
    models = [
        {"name": f"digits_{kind}", "path": str(userland.copy_in(digits.model(kind), folder))}
        for kind in DIGITS_KINDS
    ]
    agent = start_agent(
        userland,
        agents,
        folder,
        {"device_id": "arm64-answers", "models": [dict(m, threads=1) for m in models]},
    )
    x, _ = digits.data()
    x = x[:SAMPLES]
    with agent.client(timeout_s=120) as client:
        for kind in DIGITS_KINDS:
            host = run_model_directly(HOST_RUNTIME, digits.model(kind), x, threads=1)
            batch = client.infer(f"digits_{kind}", {DIGITS_INPUT: x})
            one = client.infer(f"digits_{kind}", {DIGITS_INPUT: x[:1]})
            assert batch.served_by == "edge"
            got = batch.outputs[DIGITS_OUTPUT]
            assert got.shape == host.shape
            assert np.array_equal(got.argmax(1), host.argmax(1)), kind
            if kind == "int8":  # the same int8 codes, dequantized alike
                step = output_scale(HOST_RUNTIME, digits.model(kind))
                np.testing.assert_array_equal(np.round(got / step), np.round(host / step))
            else:
                np.testing.assert_allclose(got, host, rtol=1e-5, atol=1e-6, err_msg=kind)
            np.testing.assert_allclose(one.outputs[DIGITS_OUTPUT], got[:1], rtol=1e-5, atol=1e-6)


@pytest.fixture
def hub(digits: DigitsModels, broker: Broker, tmp_path: Path) -> Iterator[HubProcess]:
    repository = fallback_repository(tmp_path / "repo", digits)
    process = start_mqtt_hub(repository, tmp_path / "hub", broker)
    yield process
    process.stop()


def test_a_low_confidence_request_falls_back_over_mqtt_to_the_hosts_hub(
    userland: Userland,
    digits: DigitsModels,
    broker: Broker,
    hub: HubProcess,
    agents: list[ChrootAgent],
) -> None:
    folder = userland.workdir("fallback")
    model = userland.copy_in(digits.model("int8"), folder)
    agent = start_agent(
        userland,
        agents,
        folder,
        {
            "device_id": "arm64-fallback",
            "models": [
                {
                    "name": "digits",
                    "path": str(model),
                    "threads": 1,
                    "fallback": {
                        "policy": "on_low_confidence",
                        "threshold": THRESHOLD,
                        "cloud_model": "cloud_digits",
                        "deadline_s": 60,
                    },
                }
            ],
            "cloud": {"broker": broker.address, "retry_interval_s": 0.5},
        },
    )
    x, _ = digits.data()
    edge_reference = digits.reference("int8")
    cloud_reference = digits.reference("fp32")
    top = edge_reference.max(axis=1)
    low = np.flatnonzero(top < THRESHOLD - MARGIN)[:3]
    confident = np.flatnonzero(top > THRESHOLD + MARGIN)[:2]
    assert len(low)
    assert len(confident)
    step = output_scale(HOST_RUNTIME, digits.model("int8"))
    with agent.client(timeout_s=120) as client:
        for i in low:
            result = client.infer("digits", {DIGITS_INPUT: x[i : i + 1]}, request_id=f"low{i}")
            assert (result.served_by, result.fallback_reason) == ("cloud", "low_confidence")
            np.testing.assert_allclose(
                result.outputs[DIGITS_OUTPUT], cloud_reference[i : i + 1], rtol=1e-5, atol=1e-6
            )
        for i in confident:
            result = client.infer("digits", {DIGITS_INPUT: x[i : i + 1]}, request_id=f"ok{i}")
            assert result.served_by == "edge"
            np.testing.assert_allclose(
                result.outputs[DIGITS_OUTPUT], edge_reference[i : i + 1], atol=step * 1.01
            )
