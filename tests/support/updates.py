"""Helpers for signed model updates, for the update tests and anyone testing abuse of them.

- :func:`make_keys`: an Ed25519 key pair on disk (``model-convert keygen``'s format).
- :func:`make_artifact`: an artifact folder (model file + manifest with a smoke test) from a
  ``.tflite`` file, without TensorFlow: the smoke outputs come from running the file.
- :func:`sign`: ``release.json`` in a folder (``model-convert sign``), any expiry or budget.
- :func:`signed_release`: a release signed in memory, as raw JSON, for crafting announcements.
- :func:`announcement`: a fleet announcement payload holding raw releases.
- :func:`publish`: upload and publish a signed folder to a running hub (``model-convert publish``).
- :func:`inject`: publish an announcement, retained, straight on a class's fleet topic: what an
  attacker with broker access could do.
- :func:`nan_model`: a copy of the digits fp32 model whose dense bias is NaN (every output NaN).
- :func:`updates_section`: the agent config's ``updates`` section for a hub and keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from converters.publish import publish_artifact
from converters.signing import (
    generate_keypair,
    load_private_key,
    make_release,
    sign_artifact,
    sign_release,
)
from protocols import (
    MANIFEST_FILENAME,
    ArtifactManifest,
    ManifestTensor,
    SmokeSample,
    SmokeTensor,
    SmokeTest,
    SourceInfo,
    Thresholds,
    ValidationReport,
    fleet_models_topic,
)
from tests.support.broker import Broker
from tests.support.models import (
    DIGITS_INPUT,
    DIGITS_OUTPUT,
    first_available_runtime,
    run_model_directly,
)

DEVICE_CLASS = "test-class"
MODEL_NAME = "digits"
PROFILE = "test-litert"


@dataclass(frozen=True)
class Keys:
    private_path: Path
    public_path: Path
    public_base64: str
    key_id: str

    def private(self) -> Ed25519PrivateKey:
        return load_private_key(self.private_path)


def make_keys(folder: Path, name: str = "release") -> Keys:
    pair = generate_keypair(folder / name)
    return Keys(pair.private_path, pair.public_path, pair.public_base64, pair.key_id)


def make_artifact(
    folder: Path,
    model: Path,
    *,
    version: str,
    name: str = MODEL_NAME,
    device_class: str = DEVICE_CLASS,
    profile: str = PROFILE,
    smoke: bool = True,
    smoke_inputs: np.ndarray | None = None,
) -> Path:
    """``folder`` with ``model.tflite`` and a manifest; the smoke test runs ``smoke_inputs``
    (two zero-and-ones rows by default) through the file itself."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.tflite"
    shutil.copyfile(model, target)
    data = target.read_bytes()
    smoke_test = None
    if smoke:
        x = smoke_inputs
        if x is None:
            x = np.stack([np.linspace(0, 1, 64), np.linspace(1, 0, 64)]).astype(np.float32)
        runtime = first_available_runtime()
        samples = []
        for row in x:
            y = run_model_directly(runtime, target, row[None, :])
            samples.append(
                SmokeSample(
                    inputs={DIGITS_INPUT: _smoke_tensor(row[None, :])},
                    outputs={DIGITS_OUTPUT: _smoke_tensor(y.astype(np.float32))},
                )
            )
        smoke_test = SmokeTest(samples=samples, atol=1e-3, rtol=1e-3)
    manifest = ArtifactManifest(
        name=name,
        version=version,
        profile=profile,
        device_class=device_class,
        format="tflite",
        precision="fp32",
        file=target.name,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        inputs=[ManifestTensor(name=DIGITS_INPUT, datatype="FP32", shape=[-1, 64])],
        outputs=[ManifestTensor(name=DIGITS_OUTPUT, datatype="FP32", shape=[-1, 10])],
        source=SourceInfo(filename="digits.keras", format="keras", sha256="0" * 64),
        tools={"hybrid-inference": "test"},
        validation=ValidationReport(
            passed=True, samples=0, samples_origin="generated", thresholds=Thresholds(), outputs=[]
        ),
        created_at=dt.datetime.now(dt.timezone.utc),
        smoke_test=smoke_test,
    )
    (folder / MANIFEST_FILENAME).write_text(manifest.to_json())
    return folder


def _smoke_tensor(array: np.ndarray) -> SmokeTensor:
    return SmokeTensor(datatype="FP32", shape=list(array.shape), data=array.reshape(-1).tolist())


def read_manifest(folder: Path) -> ArtifactManifest:
    return ArtifactManifest.model_validate_json((folder / MANIFEST_FILENAME).read_text())


def sign(
    folder: Path,
    keys: Sequence[Keys],
    *,
    expires_in_s: float = 3600.0,
    latency_budget_ms: float | None = None,
    resign: bool = True,
) -> dict[str, Any]:
    """Sign ``folder`` (writes ``release.json``); the release as raw JSON."""
    release = sign_artifact(
        folder,
        [k.private() for k in keys],
        expires_in_s=expires_in_s,
        latency_budget_ms=latency_budget_ms,
        resign=resign,
    )
    return release.model_dump(mode="json")


def signed_release(
    manifest: ArtifactManifest,
    keys: Sequence[Keys],
    *,
    expires_in_s: float = 3600.0,
    latency_budget_ms: float | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """A release of ``manifest`` signed in memory, as raw JSON (``now`` in the past makes an
    expired one)."""
    info = make_release(
        manifest, expires_in_s=expires_in_s, latency_budget_ms=latency_budget_ms, now=now
    )
    return sign_release(info, [k.private() for k in keys]).model_dump(mode="json")


def announcement(releases: Sequence[Mapping[str, Any]], device_class: str = DEVICE_CLASS) -> bytes:
    return json.dumps(
        {
            "device_class": device_class,
            "releases": list(releases),
            "published_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
    ).encode()


def publish(folder: Path, hub_url: str, api_key: str | None = None) -> dict[str, Any]:
    return publish_artifact(folder, f"http://{hub_url}", api_key=api_key)


def inject(broker: Broker, payload: bytes, device_class: str = DEVICE_CLASS) -> None:
    """Publish ``payload`` retained on the class's fleet topic and wait for the broker's ack."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(fleet_models_topic(device_class), payload, qos=1, retain=True)
        info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def nan_model(source: Path, target: Path) -> Path:
    """``source`` (digits_fp32.tflite) with its dense-layer biases set to NaN: the interpreter
    reports the bias values, and the file holds them as raw float32 bytes."""
    from tests.support.models import interpreter_class

    interpreter = interpreter_class(first_available_runtime())(model_path=str(source))
    interpreter.allocate_tensors()
    data = bytearray(source.read_bytes())
    for detail in interpreter.get_tensor_details():
        if "dense" in detail["name"] and "BiasAdd" in detail["name"]:
            bias = interpreter.get_tensor(detail["index"]).tobytes()
            offset = data.find(bias)
            if offset >= 0:
                data[offset : offset + len(bias)] = np.full(
                    len(bias) // 4, np.nan, dtype=np.float32
                ).tobytes()
                target.write_bytes(bytes(data))
                return target
    raise RuntimeError(f"no dense bias found in {source}")


def updates_section(hub_url: str, keys: Sequence[Keys], **settings: Any) -> dict[str, Any]:
    return {
        "hub_url": f"http://{hub_url}",
        "trusted_keys": [k.public_base64 for k in keys],
        **settings,
    }


def agent_settings(
    broker: Broker,
    hub_url: str,
    keys: Sequence[Keys],
    model: Path,
    *,
    device_class: str = DEVICE_CLASS,
    device_id: str = "update-device",
    **updates: Any,
) -> dict[str, Any]:
    """An agent config (for ``tests.support.fallback.AgentProcess``) serving ``model`` as
    ``digits`` version 1, taking updates from ``hub_url`` over ``broker``."""
    return {
        "device_id": device_id,
        "device_class": device_class,
        "models": [{"name": MODEL_NAME, "path": str(model), "version": "1"}],
        "cloud": {"broker": broker.address, "telemetry_interval_s": 0},
        "updates": updates_section(
            hub_url, keys, **{"health_window_s": 0.3, "health_interval_s": 0.1, **updates}
        ),
    }


def wait_until(predicate: Any, timeout_s: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; that value."""
    import time

    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the agent may be restarting
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout_s} s (last: {last!r})")


def update_detail(agent: Any, model: str = MODEL_NAME) -> dict[str, Any]:
    """The agent's ``detail.updates[model]`` from its local status."""
    with agent.client(timeout_s=5) as client:
        return dict(client.status()["detail"]["updates"].get(model, {}))
