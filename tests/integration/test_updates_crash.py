"""SIGKILL of the agent at every step of an update, then a restart: it always serves the old
model or the new one, never a broken one, and then finishes what the crash interrupted.

The agent kills itself at an exact step (``HYBRID_UPDATE_TEST_KILL_AT``): after each 1 KiB
chunk of the download, around every rename and fsync of the install, in the health window and
around the confirmation; and, for a release that misses its latency budget, around every write
of the rollback. Models are tiny, so each point costs two agent starts.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.updater import KILL_ENV
from tests.support.broker import Broker
from tests.support.fallback import AgentProcess, start_mqtt_hub
from tests.support.hub import HubProcess
from tests.support.models import (
    DigitsModels,
    ensure_digits_models,
    first_available_runtime,
    require,
    run_model_directly,
)
from tests.support.updates import (
    Keys,
    agent_settings,
    make_artifact,
    make_keys,
    publish,
    sign,
    update_detail,
    wait_until,
)

pytestmark = pytest.mark.integration

INSTALL = "c-crash"
ROLLBACK = "c-crash-rb"
CHUNK_BYTES = 1024
INSTALL_STEPS = [
    "downloaded",
    "placed",
    "smoke_tested",
    "pointer_tmp",
    "pointer",
    "state_tmp",
    "state",
    "swapped",
    "watching",
    "confirm_tmp",
    "confirm",
]
ROLLBACK_STEPS = ["swapped", "rollback_pointer_tmp", "rollback_pointer", "rollback_state"]
X = np.random.default_rng(11).random((2, 64), dtype=np.float32)


def _download_steps() -> list[str]:
    digits = ensure_digits_models_or_none()
    if digits is None:
        return ["download_0"]
    size = digits.model("fp16").stat().st_size
    return [f"download_{k}" for k in range(-(-size // CHUNK_BYTES))]


def ensure_digits_models_or_none() -> DigitsModels | None:
    try:
        return ensure_digits_models()
    except Exception:
        return None


POINTS = [(INSTALL, step) for step in _download_steps() + INSTALL_STEPS] + [
    (ROLLBACK, step) for step in ROLLBACK_STEPS
]


@pytest.fixture(scope="module")
def digits() -> DigitsModels:
    return require(ensure_digits_models)


@pytest.fixture(scope="module")
def references(digits: DigitsModels) -> dict[str, np.ndarray]:
    runtime = first_available_runtime()
    return {
        "1": run_model_directly(runtime, digits.model("fp32"), X),
        "2": run_model_directly(runtime, digits.model("fp16"), X),
    }


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, digits: DigitsModels
) -> Iterator[tuple[Broker, HubProcess, Keys]]:
    root = tmp_path_factory.mktemp("crash")
    broker = Broker(workdir=root)
    broker.start()
    (root / "repo").mkdir()
    hub = start_mqtt_hub(root / "repo", root / "hub", broker)
    keys = make_keys(root)
    for cls, budget_ms in ((INSTALL, None), (ROLLBACK, 0.0001)):
        folder = make_artifact(
            root / cls, digits.model("fp16"), version="2", device_class=cls, profile=cls
        )
        sign(folder, [keys], latency_budget_ms=budget_ms)
        publish(folder, hub.url)
    yield broker, hub, keys
    hub.stop()
    broker.stop()


def _serves_old_or_new(agent: AgentProcess, references: dict[str, np.ndarray]) -> str:
    with agent.client(timeout_s=10) as client:
        result = client.infer("digits", {"pixels": X})
    version = result.model_version
    assert version in references, f"serves version {version!r}"
    np.testing.assert_allclose(result.outputs["output_0"], references[version], atol=1e-3)
    return version


@pytest.mark.parametrize(("cls", "step"), POINTS, ids=[f"{c}:{s}" for c, s in POINTS])
def test_killed_at_a_step_it_serves_old_or_new_after_a_restart(
    tmp_path: Path,
    digits: DigitsModels,
    references: dict[str, np.ndarray],
    setup: tuple[Broker, HubProcess, Keys],
    monkeypatch: pytest.MonkeyPatch,
    cls: str,
    step: str,
) -> None:
    broker, hub, keys = setup
    window = {"health_window_s": 0.3} if cls == INSTALL else {"health_window_s": 5.0}
    settings = agent_settings(
        broker,
        hub.url,
        [keys],
        digits.model("fp32"),
        device_class=cls,
        device_id=f"crash-{cls}",
        download_chunk_bytes=CHUNK_BYTES,
        health_interval_s=0.05,
        **window,
    )
    agent = AgentProcess(workdir=tmp_path, config=settings)
    monkeypatch.setenv(KILL_ENV, step)
    with contextlib.suppress(AssertionError):  # killed before it reported ready
        agent.start()
    assert agent.process is not None
    assert agent.process.wait(timeout=60) == -signal.SIGKILL, agent.log()
    monkeypatch.delenv(KILL_ENV)

    agent.start()
    try:
        _serves_old_or_new(agent, references)  # right after the restart
        want, state = ("2", "installed") if cls == INSTALL else ("1", None)
        wait_until(
            lambda: (
                _serves_old_or_new(agent, references) == want
                and (state is None or update_detail(agent).get("state") == state)
            ),
            timeout_s=30,
            what=f"version {want}",
        )
        if cls == ROLLBACK:
            assert agent.metric('edge_agent_model_version{model="digits"}') == 1.0
        assert "Traceback" not in agent.log()
    finally:
        agent.stop()
