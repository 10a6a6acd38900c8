"""A barrage of hostile model announcements at a real agent, injected on its fleet topic as an
attacker with broker access could, while apps keep calling the model.

Each round sends one of every kind: a signed manifest changed after signing, a release signed by
an unknown key, an expired release, one for another device class, a replay of an older version,
junk, and a valid JSON that is no announcement; once, an announcement over 4 MiB and an artifact
tampered on the hub's disk. Nothing hostile may be installed (every answer during the barrage is
the trusted version's, numerically), each kind is rejected under its reason, and a genuine release
still installs afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.reliability.conftest import record, sized
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
    announcement,
    inject,
    make_artifact,
    make_keys,
    publish,
    read_manifest,
    sign,
    signed_release,
    update_detail,
    wait_until,
)

pytestmark = pytest.mark.integration

CLS = "c-barrage"
X = np.random.default_rng(11).random((2, 64), dtype=np.float32)
REASONS = ("signature", "expired", "device_class", "rollback", "malformed", "sha256")


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[HubProcess]:
    (tmp_path / "hub-repo").mkdir()
    process = start_mqtt_hub(tmp_path / "hub-repo", tmp_path / "hub", broker)
    yield process
    process.stop()


def test_hostile_announcements_install_nothing(
    broker: Broker, hub: HubProcess, tmp_path: Path
) -> None:
    digits: DigitsModels = require(ensure_digits_models)
    rounds = sized(10, 100)
    keys, rogue = make_keys(tmp_path / "keys"), make_keys(tmp_path / "rogue", "rogue")
    runtime = first_available_runtime()
    expected = {
        "3": run_model_directly(runtime, digits.model("int8"), X),
        "60": run_model_directly(runtime, digits.model("fp16"), X),
    }

    def artifact(kind: str, version: str) -> Path:
        return make_artifact(
            tmp_path / f"a{version}",
            digits.model(kind),
            version=version,
            device_class=CLS,
            profile=f"{CLS}-litert",
        )

    trusted = artifact("int8", "3")
    sign(trusted, [keys])
    publish(trusted, hub.url)
    agent = AgentProcess(
        workdir=tmp_path / "agent",
        config=agent_settings(broker, hub.url, [keys], digits.model("fp32"), device_class=CLS),
    )
    agent.start()
    try:
        wait_until(lambda: update_detail(agent).get("version") == "3", what="v3 installed")
        answers: list[tuple[str | None, bool]] = []
        stop = threading.Event()

        def app() -> None:
            with agent.client(timeout_s=30) as client:
                while not stop.is_set():
                    result = client.infer("digits", {"pixels": X})
                    version = result.model_version
                    good = version in expected and np.allclose(
                        result.outputs["output_0"], expected[version], atol=0.05
                    )
                    answers.append((version, bool(good)))

        caller = threading.Thread(target=app)
        caller.start()
        manifest = read_manifest(trusted)
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
        sent = 0

        def send(reason: str, payload: bytes) -> None:
            """Inject and wait for its rejection: the updater acts on the newest announcement,
            so one sent on top of another before it was read would never be looked at."""
            nonlocal sent
            before = _rejections(agent, reason)
            inject(broker, payload, CLS)
            sent += 1
            wait_until(
                lambda: _rejections(agent, reason) > before, timeout_s=30, what=f"{reason} #{sent}"
            )

        def release(version: int, signers: list[Keys] | None = None, **changes: Any) -> Any:
            update = {"version": str(version), **changes}
            return signed_release(manifest.model_copy(update=update), signers or [keys])

        try:
            for r in range(rounds):
                base = 100 + 10 * r
                forged = release(base + 1)
                forged["signed"]["manifest"]["version"] = str(base + 9)  # changed after signing
                send("signature", announcement([forged], CLS))
                send("signature", announcement([release(base + 2, [rogue])], CLS))
                expired = signed_release(
                    manifest.model_copy(update={"version": str(base + 3)}), [keys], now=past
                )
                send("expired", announcement([expired], CLS))
                send("device_class", announcement([release(base + 4, device_class="other")], CLS))
                send("rollback", announcement([release(2)], CLS))  # older than the installed 3
                send("malformed", b"{junk %d" % r)
                send("malformed", json.dumps({"device_class": CLS, "releases": r}).encode())
            send("malformed", b"{" + b" " * (4 << 20))
            # A genuine release whose file was changed on the hub's disk after signing.
            tampered = artifact("fp16", "50")
            sign(tampered, [keys])
            publish(tampered, hub.url)
            stored = hub.repository / ".artifacts" / "digits" / "50" / f"{CLS}-litert"
            data = bytearray((stored / "model.tflite").read_bytes())
            data[len(data) // 2] ^= 0x01
            (stored / "model.tflite").write_bytes(bytes(data))
            sent += 1
            wait_until(
                lambda: (
                    all(_rejections(agent, reason) > 0 for reason in REASONS)
                    or {reason: _rejections(agent, reason) for reason in REASONS}
                ),
                timeout_s=60,
                what="a rejection of every kind",
            )
        finally:
            stop.set()
            caller.join(30)
        rejections = {reason: _rejections(agent, reason) for reason in REASONS}
        installed_during = sorted({v for v, _ in answers if v is not None})
        wrong = sum(not good for _, good in answers)

        genuine = artifact("fp16", "60")
        sign(genuine, [keys])
        publish(genuine, hub.url)
        wait_until(lambda: update_detail(agent).get("version") == "60", what="v60 installed")
        with agent.client(timeout_s=30) as client:
            after = client.infer("digits", {"pixels": X})
        record(
            "update_abuse",
            hostile_announcements=sent,
            rounds=rounds,
            rejections=rejections,
            answers_during=len(answers),
            versions_served_during=installed_during,
            wrong_answers=wrong,
            hostile_installs=len(set(installed_during) - {"3"}),
            genuine_installed_after=after.model_version,
        )
        assert installed_during == ["3"]
        assert wrong == 0
        assert answers
        assert all(count > 0 for count in rejections.values())
        assert after.model_version == "60"
        np.testing.assert_allclose(after.outputs["output_0"], expected["60"], atol=1e-3)
    finally:
        agent.stop()


def _rejections(agent: AgentProcess, reason: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in agent.metrics().splitlines()
        if line.startswith("edge_agent_update_rejections_total{") and f'reason="{reason}"' in line
    )
