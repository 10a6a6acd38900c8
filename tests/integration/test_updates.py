"""Signed model updates end to end: a real Mosquitto, a real hub, real agents.

One broker and one hub serve the whole module; each test takes its own device class, so the
hub's retained announcements of one test never reach another's agent. The agents serve
``digits`` version 1 (the fp32 model) from their config; releases are the fp16 model (v2), the
int8 model (v3) and a NaN copy of fp32.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocols import DeviceStatus, status_topic
from tests.support.broker import Broker
from tests.support.fallback import AgentProcess, Watcher, agent_starter, start_mqtt_hub
from tests.support.hub import HubProcess, console_script
from tests.support.models import DigitsModels, ensure_digits_models, require
from tests.support.updates import (
    Keys,
    agent_settings,
    announcement,
    inject,
    make_artifact,
    make_keys,
    nan_model,
    publish,
    read_manifest,
    sign,
    signed_release,
    update_detail,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits() -> DigitsModels:
    return require(ensure_digits_models)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(workdir=tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[HubProcess]:
    root = tmp_path_factory.mktemp("hub")
    (root / "repo").mkdir()
    hub = start_mqtt_hub(root / "repo", root / "work", broker)
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Any]:
    with agent_starter(tmp_path) as make:
        yield make


X = np.random.default_rng(7).random((3, 64), dtype=np.float32)


def _answer(agent: AgentProcess) -> tuple[str | None, np.ndarray]:
    with agent.client(timeout_s=10) as client:
        result = client.infer("digits", {"pixels": X})
    return result.model_version, result.outputs["output_0"]


def _assert_serves(agent: AgentProcess, digits: DigitsModels, version: str, kind: str) -> None:
    served, y = _answer(agent)
    assert served == version
    expected = _reference(digits, kind)
    np.testing.assert_allclose(y, expected, atol=0.05 if kind == "int8" else 1e-3)


def _reference(digits: DigitsModels, kind: str) -> np.ndarray:
    from tests.support.models import first_available_runtime, run_model_directly

    return run_model_directly(first_available_runtime(), digits.model(kind), X)


def _artifact(tmp_path: Path, digits: DigitsModels, kind: str, version: str, cls: str) -> Path:
    return make_artifact(
        tmp_path / f"{cls}-{version}",
        digits.model(kind),
        version=version,
        device_class=cls,
        profile=f"{cls}-litert",  # one hub for the module: one store folder per class
    )


def _rejected(agent: AgentProcess, reason: str) -> float:
    return agent.metric(f'edge_agent_update_rejections_total{{model="digits",reason="{reason}"}}')


def _status_with(watcher: Watcher, predicate: Any, timeout_s: float = 20.0) -> DeviceStatus:
    """The next status message on the watcher that satisfies ``predicate``."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no status message matched")
        status = DeviceStatus.model_validate_json(watcher.next(left).payload)
        if predicate(status.detail.get("updates", {}).get("digits", {})):
            return status


def test_a_published_model_reaches_the_agent_and_serves(
    tmp_path: Path, digits: DigitsModels, broker: Broker, hub: HubProcess, keys: Keys, make_agent
) -> None:
    cls = "c-publish"
    agent = make_agent(
        agent_settings(broker, hub.url, [keys], digits.model("fp32"), device_class=cls)
    )
    _assert_serves(agent, digits, "1", "fp32")
    folder = _artifact(tmp_path, digits, "fp16", "2", cls)
    subprocess.run(
        [console_script("model-convert"), "sign", str(folder), "--key", str(keys.private_path)],
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        [
            console_script("model-convert"),
            "publish",
            str(folder),
            "--hub",
            f"http://{hub.url}",
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    answer = json.loads(done.stdout)
    assert answer["announced"] is True
    assert answer["topic"] == f"hybrid/v1/fleet/{cls}/models"
    wait_until(lambda: update_detail(agent).get("state") == "installed", what="installed")
    _assert_serves(agent, digits, "2", "fp16")
    assert agent.metric('edge_agent_model_version{model="digits"}') == 2.0
    assert agent.metric('edge_agent_updates_total{model="digits",outcome="confirmed"}') == 1.0
    # The hub lists the signed artifact.
    import urllib.request

    with urllib.request.urlopen(f"http://{hub.url}/v1/artifacts?device_class={cls}") as reply:
        listed = json.loads(reply.read())["artifacts"]
    assert [(a["version"], a["signed"]) for a in listed] == [("2", True)]


def test_a_tampered_artifact_or_announcement_is_rejected(
    tmp_path: Path, digits: DigitsModels, broker: Broker, hub: HubProcess, keys: Keys, make_agent
) -> None:
    cls = "c-tamper"
    folder = _artifact(tmp_path, digits, "fp16", "2", cls)
    raw = sign(folder, [keys])
    publish(folder, hub.url)
    stored = hub.repository / ".artifacts" / "digits" / "2" / read_manifest(folder).profile
    data = bytearray((stored / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte, on the hub's disk
    (stored / "model.tflite").write_bytes(bytes(data))
    watcher = Watcher(broker, status_topic("update-device"))
    try:
        agent = make_agent(
            agent_settings(broker, hub.url, [keys], digits.model("fp32"), device_class=cls)
        )
        status = _status_with(
            watcher, lambda u: u.get("last_rejection", {}).get("reason") == "sha256"
        )
        assert "sha256" in status.detail["updates"]["digits"]["last_rejection"]["message"]
        assert _rejected(agent, "sha256") == 1.0
        _assert_serves(agent, digits, "1", "fp32")
        # One byte changed in the signed manifest: the signature no longer holds.
        raw["signed"]["manifest"]["version"] = "7"
        inject(broker, announcement([raw], cls), cls)
        _status_with(watcher, lambda u: u.get("last_rejection", {}).get("reason") == "signature")
        assert _rejected(agent, "signature") == 1.0
        _assert_serves(agent, digits, "1", "fp32")
    finally:
        watcher.close()


def test_replays_expired_and_foreign_releases_are_rejected_also_after_a_restart(
    tmp_path: Path, digits: DigitsModels, broker: Broker, hub: HubProcess, keys: Keys, make_agent
) -> None:
    import datetime as dt

    cls = "c-replay"
    old = _artifact(tmp_path, digits, "fp16", "2", cls)
    old_raw = sign(old, [keys])
    publish(old, hub.url)
    new = _artifact(tmp_path, digits, "int8", "3", cls)
    sign(new, [keys])
    publish(new, hub.url)  # the hub announces the newest: 3
    settings = agent_settings(broker, hub.url, [keys], digits.model("fp32"), device_class=cls)
    agent = make_agent(settings)
    wait_until(lambda: update_detail(agent).get("state") == "installed", what="installed")
    _assert_serves(agent, digits, "3", "int8")

    watcher = Watcher(broker, status_topic("update-device"))
    try:
        inject(broker, announcement([old_raw], cls), cls)  # an attacker replays version 2
        _status_with(watcher, lambda u: u.get("last_rejection", {}).get("reason") == "rollback")
        assert _rejected(agent, "rollback") == 1.0
        _assert_serves(agent, digits, "3", "int8")

        # After a restart the replay (still retained) is refused again: the highest installed
        # version is on disk, although the config still says version 1.
        agent.stop()
        agent.start()
        wait_until(lambda: _rejected(agent, "rollback") == 1.0, what="rollback after restart")
        assert update_detail(agent)["last_rejection"]["reason"] == "rollback"
        _assert_serves(agent, digits, "3", "int8")

        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
        expired = signed_release(
            read_manifest(_artifact(tmp_path, digits, "fp16", "4", cls)),
            [keys],
            expires_in_s=86_400,
            now=past,
        )
        inject(broker, announcement([expired], cls), cls)
        _status_with(watcher, lambda u: u.get("last_rejection", {}).get("reason") == "expired")
        assert _rejected(agent, "expired") == 1.0

        foreign = sign(_artifact(tmp_path, digits, "fp16", "5", "another-class"), [keys])
        inject(broker, announcement([foreign], cls), cls)
        _status_with(watcher, lambda u: u.get("last_rejection", {}).get("reason") == "device_class")
        assert _rejected(agent, "device_class") == 1.0
        _assert_serves(agent, digits, "3", "int8")
    finally:
        watcher.close()


def test_nan_outputs_and_a_missed_latency_budget_roll_back(
    tmp_path: Path, digits: DigitsModels, broker: Broker, hub: HubProcess, keys: Keys, make_agent
) -> None:
    cls = "c-health"
    window_s = 8.0
    agent = make_agent(
        agent_settings(
            broker,
            hub.url,
            [keys],
            digits.model("fp32"),
            device_class=cls,
            health_window_s=window_s,
            health_interval_s=0.2,
        )
    )
    # A model that gives NaN, shipped without smoke samples: only the health window can see it.
    broken = make_artifact(
        tmp_path / "nan",
        nan_model(digits.model("fp32"), tmp_path / "nan.tflite"),
        version="2",
        device_class=cls,
        profile=f"{cls}-litert",
        smoke=False,
    )
    sign(broken, [keys])
    publish(broken, hub.url)
    wait_until(lambda: update_detail(agent).get("state") == "watching", what="watching")
    started = update_detail(agent)["updated_at"]
    served, y = _answer(agent)  # app traffic meets the broken version...
    assert served == "2"
    assert np.isnan(y).all()
    detail = wait_until(
        lambda: (d := update_detail(agent)).get("state") == "rolled_back" and d,
        timeout_s=window_s,
        what="rollback within the window",
    )
    assert detail["rolled_back"]["version"] == "2"
    assert "NaN" in detail["rolled_back"]["reason"]
    assert _elapsed_s(started, detail["updated_at"]) < window_s
    _assert_serves(agent, digits, "1", "fp32")
    assert agent.metric('edge_agent_updates_total{model="digits",outcome="rolled_back"}') == 1.0

    # A good model, but its release asks for a run time no interpreter can keep.
    slow = _artifact(tmp_path, digits, "fp16", "3", cls)
    sign(slow, [keys], latency_budget_ms=0.0001)
    publish(slow, hub.url)
    detail = wait_until(
        lambda: (d := update_detail(agent)).get("rolled_back", {}).get("version") == "3" and d,
        timeout_s=window_s + 10,
        what="latency rollback",
    )
    assert "budget" in detail["rolled_back"]["reason"]
    _assert_serves(agent, digits, "1", "fp32")
    assert agent.metric('edge_agent_updates_total{model="digits",outcome="rolled_back"}') == 2.0


def _elapsed_s(start: str, end: str) -> float:
    import datetime as dt

    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()
