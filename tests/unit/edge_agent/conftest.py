from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.runtime import RuntimeInfo, select_runtime
from tests.support.models import DIGITS_KINDS, DigitsModels, ensure_digits_models, require


@pytest.fixture(scope="session")
def digits() -> DigitsModels:
    return require(ensure_digits_models)


@pytest.fixture(scope="session")
def runtime() -> RuntimeInfo:
    return select_runtime()


@pytest.fixture
def make_config(tmp_path: Path, digits: DigitsModels) -> Callable[..., AgentConfig]:
    """An in-process agent config: the three digits models, API on a free port, no metrics."""

    def make(**settings: Any) -> AgentConfig:
        models = [
            {"name": f"digits_{kind}", "path": str(digits.model(kind))} for kind in DIGITS_KINDS
        ]
        models[0]["labels"] = str(digits.labels)
        data: dict[str, Any] = {
            "device_id": "unit-device",
            "data_dir": str(tmp_path / "data"),
            "api_address": "127.0.0.1:0",
            "metrics_address": None,
            "probe_models": False,
            "models": models,
        }
        data.update(settings)
        return AgentConfig.model_validate(data)

    return make


@pytest.fixture
def make_agent(make_config: Callable[..., AgentConfig]) -> Iterator[Callable[..., Agent]]:
    """Factory of started in-process agents, stopped at the end of the test."""
    agents: list[Agent] = []

    def make(**settings: Any) -> Agent:
        agent = Agent(make_config(**settings))
        agents.append(agent)
        agent.start()
        return agent

    yield make
    for agent in agents:
        agent.stop(drain_timeout_s=1)
