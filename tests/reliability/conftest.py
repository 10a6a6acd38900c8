"""Fixtures of the reliability suite: sizes, a model repository, hub and agent factories, figures.

``HYBRID_RELIABILITY_SCALE=full`` selects the documented full sizes (``make reliability``); the
default is the short run CI can afford. ``HYBRID_RELIABILITY_FIGURES`` names a JSON-lines file
that every test appends its figures to (they are printed too, for ``pytest -s``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import onnx_models
from tests.support.fallback import AgentProcess
from tests.support.hub import add_model

FULL = os.environ.get("HYBRID_RELIABILITY_SCALE", "ci").lower() == "full"
DEVICE_ID = "reliability-device"


def sized(ci: int, full: int) -> int:
    """The CI size, or the full one under ``HYBRID_RELIABILITY_SCALE=full``."""
    return full if FULL else ci


def record(test: str, **figures: Any) -> None:
    """Print the figures of one run and append them to ``$HYBRID_RELIABILITY_FIGURES``."""
    line = json.dumps(
        {
            "test": test,
            "scale": "full" if FULL else "ci",
            "at": time.strftime("%FT%TZ", time.gmtime()),
            **figures,
        },
        default=float,
    )
    print(f"\nreliability: {line}")
    target = os.environ.get("HYBRID_RELIABILITY_FIGURES")
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            out.write(line + "\n")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``add_sub`` (ONNX: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, FP32 [batch, 4])."""
    repo = tmp_path_factory.mktemp("repo")
    add_model(
        repo,
        "add_sub",
        {
            "backend": "onnxruntime",
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_us": 200},
        },
        onnx_models.add_sub,
    )
    return repo


def agent_config(broker_address: str, **cloud: Any) -> dict[str, Any]:
    """An agent with one remote model, ``add`` (the hub's ``add_sub``), that queues when the cloud
    is out of reach."""
    return {
        "device_id": DEVICE_ID,
        "log_level": "WARNING",
        "models": [],
        "cloud": {
            "broker": broker_address,
            "retry_interval_s": 0.3,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5,
            "breaker": {"failures": 1000},
            "telemetry_interval_s": 0.2,
            "outbox": {"synchronous": "normal"},
            "remote_models": [
                {
                    "name": "add",
                    "cloud_model": "add_sub",
                    "deadline_s": 10.0,
                    "on_cloud_unavailable": "queue",
                }
            ],
            **cloud,
        },
    }


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Factory of started agents (``agent_config``); each stopped at the end."""
    started: list[AgentProcess] = []

    def start(broker_address: str, **cloud: Any) -> AgentProcess:
        agent = AgentProcess(
            workdir=tmp_path / f"agent{len(started)}", config=agent_config(broker_address, **cloud)
        )
        started.append(agent)
        agent.start()
        return agent

    yield start
    for agent in started:
        agent.stop()
