"""``model-convert`` as a user runs it: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support import models
from tests.unit.converters.sources import DigitsSource, ensure_digits_source

pytestmark = pytest.mark.integration


def model_convert(*args: str | Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "converters", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def digits() -> DigitsSource:
    return models.require(ensure_digits_source)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def samples(digits: DigitsSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, x_test, _ = digits.arrays()
    path = tmp_path_factory.mktemp("data") / "samples.npz"
    np.savez(path, pixels=x_test)
    return path


def assert_nothing_written(out: Path) -> None:
    """No artifact, no staging folder: the output folder is gone or as empty as it was."""
    assert not out.exists() or list(out.iterdir()) == []


def test_build_json_then_inspect_and_validate(
    digits: DigitsSource, samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = model_convert(
        "build", digits.keras, "-p", "x86-gateway-litert-fp32", "--out", out,
        "--samples", samples, "--name", "digits", "--version", "2", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout holds the JSON and nothing else
    (artifact,) = result["artifacts"]
    assert artifact["profile"] == "x86-gateway-litert-fp32"
    model = Path(artifact["file"])
    assert model == out / "x86-gateway-litert-fp32" / "model.tflite"
    assert artifact["manifest"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert artifact["manifest"]["validation"]["passed"] is True
    assert "validating" in done.stderr  # progress went to stderr

    shown = model_convert("inspect", out / "x86-gateway-litert-fp32")
    assert shown.returncode == 0, shown.stderr
    assert "digits 2  (x86-gateway-litert-fp32: tflite fp32 for x86-gateway)" in shown.stdout
    assert "(ok)" in shown.stdout
    assert "pixels FP32[-1, 64]" in shown.stdout

    checked = model_convert(
        "validate", out / "x86-gateway-litert-fp32", "--source", digits.keras,
        "--samples", samples, "--json",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)["report"]
    assert report["passed"] is True
    assert report["outputs"][0]["top1_agreement"] == 1.0


def test_profiles_lists_builtin_and_user_profiles(tmp_path: Path) -> None:
    (tmp_path / "edge-box.yaml").write_text("extends: rpi4-litert-int8\ndevice_class: edge-box\n")
    listed = model_convert("profiles", "--profile-dir", tmp_path, "--json")
    assert listed.returncode == 0, listed.stderr
    profiles = {p["name"]: p for p in json.loads(listed.stdout)["profiles"]}
    assert profiles["rpi4-litert-fp16"]["builtin"] is True
    assert profiles["edge-box"]["builtin"] is False
    assert profiles["edge-box"]["device_class"] == "edge-box"
    assert profiles["edge-box"]["precision"] == "int8"
    human = model_convert("profiles")
    assert "jetson-orin-trt-fp16" in human.stdout
    assert "built-in" in human.stdout


def test_unknown_profile(digits: DigitsSource, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = model_convert("build", digits.keras, "-p", "rpi9-warp", "--out", out)
    assert done.returncode == 2
    assert "unknown profile 'rpi9-warp'; known profiles: cloud-cpu-onnx" in done.stderr
    assert_nothing_written(out)


def test_corrupt_source(digits: DigitsSource, tmp_path: Path) -> None:
    corrupt = tmp_path / "digits.keras"
    corrupt.write_bytes(digits.keras.read_bytes()[:4096])
    out = tmp_path / "out"
    done = model_convert("build", corrupt, "-p", "rpi4-litert-fp16", "--out", out, "--json")
    assert done.returncode == 3
    assert "digits.keras is not a Keras archive" in done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["kind"] == "SourceError"
    assert error["exit_code"] == 3
    assert_nothing_written(out)


def test_corrupt_onnx_source(tmp_path: Path) -> None:
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not a protobuf model")
    out = tmp_path / "out"
    done = model_convert("build", corrupt, "-p", "cloud-cpu-onnx", "--out", out)
    assert done.returncode == 3
    assert "model.onnx is not a valid ONNX model" in done.stderr
    assert_nothing_written(out)


def test_calibration_of_the_wrong_shape(digits: DigitsSource, tmp_path: Path) -> None:
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, pixels=np.zeros((32, 8, 8), np.float32))
    out = tmp_path / "out"
    out.mkdir()
    done = model_convert(
        "build", digits.keras, "-p", "rpi4-litert-int8", "--out", out, "--calibration", calibration
    )
    assert done.returncode == 2
    assert (
        "calibration.npz, array 'pixels' has shape [32, 8, 8]; input 'pixels' needs [N, 64]"
        in done.stderr
    )
    assert_nothing_written(out)


def test_a_missed_threshold_fails_the_build_with_a_report(
    digits: DigitsSource, samples: Path, tmp_path: Path
) -> None:
    strict = tmp_path / "strict-int8.yaml"
    strict.write_text(
        "extends: rpi4-litert-int8\nvalidation: {max_abs_error: 0.000001, min_top1_agreement: 1.0}\n"
    )
    out = tmp_path / "out"
    done = model_convert(
        "build", digits.keras, "-p", "rpi4-litert-fp16", "-p", strict, "--out", out,
        "--samples", samples, "--json",
    )  # fmt: skip
    assert done.returncode == 5
    assert "1 of 2 artifacts failed validation, nothing was written" in done.stderr
    assert "strict-int8: output 'output_0': max abs error" in done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["kind"] == "ValidationFailedError"
    assert error["reports"]["rpi4-litert-fp16"]["passed"] is True
    assert error["reports"]["strict-int8"]["passed"] is False
    assert_nothing_written(out)  # not even the fp16 artifact that passed


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    done = model_convert("build", tmp_path / "x.keras", "--out", tmp_path / "out")
    assert done.returncode == 2  # no --profile
    assert "--profile" in done.stderr
    assert model_convert("inspect", tmp_path).returncode == 3  # not an artifact folder
