"""The updater's parts on their own: release checks (one test per rejection reason), the on-disk
state and its recovery, resumable capped downloads, the smoke test and the health verdicts."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from edge_agent.config import ModelConfig
from edge_agent.models import load_model
from edge_agent.runtime import RuntimeInfo
from edge_agent.updater import (
    ModelStore,
    Pointer,
    Reason,
    RejectedError,
    TrustedKeys,
    UpdateState,
    check_release,
)
from edge_agent.updater.download import DownloadError, download
from edge_agent.updater.health import HealthWatch, run_smoke_test
from protocols import SmokeTest
from tests.support.models import DigitsModels
from tests.support.updates import (
    DEVICE_CLASS,
    Keys,
    make_artifact,
    make_keys,
    nan_model,
    read_manifest,
    sign,
    signed_release,
)

# -- release checks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, digits: DigitsModels) -> Path:
    return make_artifact(tmp_path_factory.mktemp("artifact"), digits.model("fp16"), version="5")


def _check(raw: dict[str, Any], signer: Keys, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "keys": TrustedKeys.load([signer.public_base64]),
        "threshold": 1,
        "device_class": DEVICE_CLASS,
        "highest_installed": 1,
        "failed": (),
        "max_size_bytes": 10**9,
    }
    settings.update(overrides)
    return check_release(raw, **settings)


def _reason(raw: dict[str, Any], signer: Keys, **overrides: Any) -> Reason:
    with pytest.raises(RejectedError) as caught:
        _check(raw, signer, **overrides)
    return caught.value.reason


def test_a_good_release_passes(artifact: Path, keys: Keys) -> None:
    release = _check(sign(artifact, [keys]), keys)
    assert release.manifest.version == "5"


def test_signature_reasons(artifact: Path, keys: Keys, tmp_path: Path) -> None:
    raw = sign(artifact, [keys])
    assert _reason(raw, keys, keys=TrustedKeys.load([make_keys(tmp_path).public_base64])) is (
        Reason.SIGNATURE
    )
    assert _reason({**raw, "signatures": []}, keys) is Reason.SIGNATURE
    assert _reason(raw, keys, threshold=2) is Reason.SIGNATURE
    assert _reason({"signed": "x", "signatures": []}, keys) is Reason.MALFORMED


def test_expired(artifact: Path, keys: Keys) -> None:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    raw = signed_release(read_manifest(artifact), [keys], expires_in_s=3600, now=past)
    assert _reason(raw, keys) is Reason.EXPIRED


def test_device_class(artifact: Path, keys: Keys) -> None:
    assert _reason(sign(artifact, [keys]), keys, device_class="another-class") is (
        Reason.DEVICE_CLASS
    )


def test_rollback_and_failed_before(artifact: Path, keys: Keys) -> None:
    raw = sign(artifact, [keys])
    assert _reason(raw, keys, highest_installed=5) is Reason.ROLLBACK
    assert _reason(raw, keys, highest_installed=9) is Reason.ROLLBACK
    assert _reason(raw, keys, failed=(5,)) is Reason.FAILED_BEFORE


def test_format_and_size(artifact: Path, keys: Keys) -> None:
    manifest = read_manifest(artifact)
    onnx = signed_release(manifest.model_copy(update={"format": "onnx"}), [keys])
    assert _reason(onnx, keys) is Reason.FORMAT
    assert _reason(sign(artifact, [keys]), keys, max_size_bytes=100) is Reason.SIZE


# -- state on disk ----------------------------------------------------------------------------


def _config(digits: DigitsModels) -> ModelConfig:
    return ModelConfig(name="digits", path=digits.model("fp32"), version="1")


def _install(store: ModelStore, artifact: Path, keys: Keys, version: str) -> None:
    folder = store.version_dir(version)
    folder.mkdir(parents=True)
    (folder / "model.tflite").write_bytes((artifact / "model.tflite").read_bytes())
    raw = signed_release(read_manifest(artifact).model_copy(update={"version": version}), [keys])

    (folder / "release.json").write_text(json.dumps(raw))


def test_pointer_and_state_round_trip(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "digits")
    assert store.pointer() == Pointer()
    assert store.state() == UpdateState()
    store.write_pointer(Pointer(version="3", previous="2", confirmed=False))
    store.write_state(UpdateState(highest_installed=3, failed=(4, 4)))
    again = ModelStore(tmp_path, "digits")
    assert again.pointer() == Pointer(version="3", previous="2", confirmed=False)
    assert again.state() == UpdateState(highest_installed=3, failed=(4,))
    assert not list(store.root.glob(".*.tmp"))


def test_recover_serves_the_pointer_and_raises_the_highest_version(
    tmp_path: Path, digits: DigitsModels, artifact: Path, keys: Keys
) -> None:
    store = ModelStore(tmp_path, "digits")
    _install(store, artifact, keys, "5")
    store.write_pointer(Pointer(version="5", previous=None, confirmed=False))
    recovered = store.recover(_config(digits), baseline=1)
    assert recovered.version == "5"
    assert recovered.unconfirmed
    assert recovered.config.path == store.version_dir("5") / "model.tflite"
    assert store.state().highest_installed == 5  # the crash came before state.json


def test_recover_falls_back_when_the_file_is_damaged(
    tmp_path: Path, digits: DigitsModels, artifact: Path, keys: Keys
) -> None:
    store = ModelStore(tmp_path, "digits")
    _install(store, artifact, keys, "5")
    _install(store, artifact, keys, "6")
    store.write_pointer(Pointer(version="6", previous="5", confirmed=True))
    with (store.version_dir("6") / "model.tflite").open("r+b") as handle:
        handle.seek(200)
        handle.write(b"\0\0\0\0")
    recovered = store.recover(_config(digits), baseline=1)
    assert recovered.version == "5"
    assert store.pointer() == Pointer(version="5", previous=None, confirmed=True)
    (store.version_dir("5") / "model.tflite").unlink()
    recovered = store.recover(_config(digits), baseline=1)
    assert recovered.version is None
    assert recovered.config.path == digits.model("fp32")
    assert store.pointer() == Pointer()


def test_an_unreadable_pointer_means_the_config_file(tmp_path: Path, digits: DigitsModels) -> None:
    store = ModelStore(tmp_path, "digits")
    store.root.mkdir(parents=True)
    (store.root / "current").write_text("{not json")
    assert store.recover(_config(digits), baseline=1).version is None


# -- downloads --------------------------------------------------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    body = b""
    extra = b""
    ranges: ClassVar[list[str | None]] = []
    honour_range = True

    def do_GET(self) -> None:
        self.ranges.append(self.headers.get("Range"))
        data = self.body + self.extra
        start = 0
        rng = self.headers.get("Range")
        if rng and self.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        if not self.extra:
            self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Files]]]:
    handler = type("Files", (_Files,), {"ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/f", handler
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_with_a_range(tmp_path: Path, server: Any) -> None:
    url, handler = server
    handler.body = bytes(range(256)) * 40
    sha = hashlib.sha256(handler.body).hexdigest()
    target = tmp_path / "model.tflite"
    (tmp_path / "model.tflite.part").write_bytes(handler.body[:3000])
    download(url, target, size_bytes=len(handler.body), sha256=sha, chunk_bytes=1024)
    assert target.read_bytes() == handler.body
    assert handler.ranges == ["bytes=3000-"]
    assert not (tmp_path / "model.tflite.part").exists()


def test_download_starts_over_when_the_range_is_ignored(tmp_path: Path, server: Any) -> None:
    url, handler = server
    handler.body = b"abcdefgh" * 500
    handler.honour_range = False
    target = tmp_path / "model.tflite"
    (tmp_path / "model.tflite.part").write_bytes(b"zzzz")  # would be wrong if kept
    download(
        url, target, size_bytes=len(handler.body), sha256=hashlib.sha256(handler.body).hexdigest()
    )
    assert target.read_bytes() == handler.body


def test_download_stops_past_the_signed_size(tmp_path: Path, server: Any) -> None:
    url, handler = server
    handler.body = b"x" * 4096
    handler.extra = b"y" * 10_000_000  # endless data, without a Content-Length
    with pytest.raises(RejectedError) as caught:
        download(
            url,
            tmp_path / "m",
            size_bytes=4096,
            sha256=hashlib.sha256(handler.body).hexdigest(),
            chunk_bytes=1024,
        )
    assert caught.value.reason is Reason.SIZE
    assert not (tmp_path / "m.part").exists()
    assert not (tmp_path / "m").exists()


def test_download_refuses_an_announced_length_over_the_signed_size(
    tmp_path: Path, server: Any
) -> None:
    url, handler = server
    handler.body = b"x" * 5000
    with pytest.raises(RejectedError) as caught:
        download(url, tmp_path / "m", size_bytes=4000, sha256="0" * 64)
    assert caught.value.reason is Reason.SIZE


def test_download_checks_the_sha256(tmp_path: Path, server: Any) -> None:
    url, handler = server
    handler.body = b"model bytes" * 100
    with pytest.raises(RejectedError) as caught:
        download(url, tmp_path / "m", size_bytes=len(handler.body), sha256="0" * 64)
    assert caught.value.reason is Reason.SHA256
    assert not (tmp_path / "m.part").exists()
    assert not (tmp_path / "m").exists()


def test_an_unreachable_hub_is_a_retry_not_a_rejection(tmp_path: Path) -> None:
    with pytest.raises(DownloadError):
        download("http://127.0.0.1:1/x", tmp_path / "m", size_bytes=10, sha256="0" * 64)


# -- smoke test and health ----------------------------------------------------------------------


def test_smoke_test_passes_and_fails(
    digits: DigitsModels, runtime: RuntimeInfo, artifact: Path
) -> None:
    smoke = read_manifest(artifact).smoke_test
    assert smoke is not None
    good = load_model(ModelConfig(name="d", path=artifact / "model.tflite"), runtime)
    other = load_model(ModelConfig(name="d", path=digits.model("int8")), runtime)
    try:
        run_smoke_test(good, smoke)
        with pytest.raises(RejectedError) as caught:
            run_smoke_test(other, SmokeTest(samples=smoke.samples, atol=1e-6, rtol=0))
        assert caught.value.reason is Reason.SMOKE_TEST
    finally:
        good.close()
        other.close()


def test_health_watch_sees_nan_outputs(
    digits: DigitsModels, runtime: RuntimeInfo, tmp_path: Path
) -> None:
    model = load_model(
        ModelConfig(name="d", path=nan_model(digits.model("fp32"), tmp_path / "nan.tflite")),
        runtime,
    )
    watch = HealthWatch(latency_budget_s=None)
    model.watch = watch
    try:
        assert watch.verdict().healthy
        model.infer({"pixels": np.ones((1, 64), np.float32)})
        verdict = watch.verdict()
        assert not verdict.healthy
        assert "NaN" in (verdict.reason or "")
    finally:
        model.close()


def test_health_watch_latency_budget_and_errors() -> None:
    watch = HealthWatch(latency_budget_s=0.010)
    for _ in range(2):
        watch.observe(0.050, {})
    assert watch.verdict().healthy  # too few runs to judge
    watch.observe(0.050, {})
    assert "budget" in (watch.verdict().reason or "")
    quick = HealthWatch(latency_budget_s=0.010)
    for _ in range(5):
        quick.observe(0.001, {"y": np.zeros(3, np.float32)})
    assert quick.verdict().healthy
    quick.error(RuntimeError("interpreter failed"))
    assert "interpreter failed" in (quick.verdict().reason or "")
