from __future__ import annotations

from pathlib import Path

import pytest

from converters.errors import ProfileError
from converters.profiles import (
    DEFAULT_THRESHOLDS,
    PROFILE_DIRS_ENV,
    SUPPORTED_PRECISIONS,
    available_profiles,
    load_profile,
    load_profiles,
)

BUILTINS = {
    "rpi4-litert-fp16": ("tflite", "fp16", "rpi4"),
    "rpi4-litert-int8": ("tflite", "int8", "rpi4"),
    "rpi4-litert-int8-float-io": ("tflite", "int8", "rpi4"),
    "rpi3-litert-int8-dynamic": ("tflite", "int8-dynamic", "rpi3"),
    "x86-gateway-litert-fp32": ("tflite", "fp32", "x86-gateway"),
    "jetson-orin-trt-fp16": ("tensorrt", "fp16", "jetson-orin"),
    "jetson-orin-trt-int8": ("tensorrt", "int8", "jetson-orin"),
    "cloud-gpu-trt-fp16": ("tensorrt", "fp16", "cloud-gpu"),
    "cloud-cpu-onnx": ("onnx", "fp32", "cloud-cpu"),
    "cloud-cpu-onnx-fp16": ("onnx", "fp16", "cloud-cpu"),
}


@pytest.mark.parametrize(("name", "expected"), BUILTINS.items())
def test_builtin_profiles_load_and_validate(name: str, expected: tuple[str, str, str]) -> None:
    profile = load_profile(name)
    assert (profile.format, profile.precision, profile.device_class) == expected
    assert profile.name == name
    assert profile.description
    assert profile.thresholds == DEFAULT_THRESHOLDS[profile.precision]


def test_every_builtin_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROFILE_DIRS_ENV, raising=False)
    entries = available_profiles()
    assert set(BUILTINS) <= set(entries)
    assert all(entry.builtin for entry in entries.values())


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError) as caught:
        load_profile("rpi5-magic")
    message = str(caught.value)
    assert "unknown profile 'rpi5-magic'" in message
    for name in BUILTINS:
        assert name in message


def test_user_file_extends_a_builtin_and_overrides_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "strict.yaml"
    path.write_text(
        "extends: rpi4-litert-int8\n"
        "validation: {min_top1_agreement: 0.995, min_cosine_similarity: null, max_rmse: 0.01}\n"
        "max_size_bytes: 1000\n"
    )
    profile = load_profile(path)
    assert profile.name == "strict"  # the file's stem
    assert (profile.format, profile.precision, profile.device_class) == ("tflite", "int8", "rpi4")
    assert profile.threads == 4  # inherited
    assert profile.max_size_bytes == 1000
    thresholds = profile.thresholds
    assert thresholds.min_top1_agreement == 0.995
    assert thresholds.min_cosine_similarity is None  # turned off
    assert thresholds.max_rmse == 0.01


def test_profile_dirs_shadow_builtins_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rpi4-litert-fp16.yaml").write_text(
        "device_class: rpi4\nformat: tflite\nprecision: fp16\nthreads: 2\n"
    )
    (tmp_path / "edge-box.yml").write_text(
        "device_class: edge-box\nformat: onnx\nprecision: fp32\n"
    )
    monkeypatch.setenv(PROFILE_DIRS_ENV, str(tmp_path))
    entries = available_profiles()
    assert not entries["rpi4-litert-fp16"].builtin
    assert load_profile("rpi4-litert-fp16").threads == 2
    assert load_profile("edge-box").format == "onnx"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("device_class: a\nformat: onnx\nprecision: int8\n", "format onnx has no precision 'int8'"),
        ("device_class: a\nformat: keras\nprecision: fp32\n", "format"),
        ("device_class: a/b\nformat: onnx\nprecision: fp32\n", "device_class"),
        ("device_class: a\nformat: onnx\nprecision: fp32\nthreads: 0\n", "threads"),
        ("device_class: a\nformat: onnx\nprecision: fp32\ncolour: red\n", "colour"),
        ("device_class: a\nformat: onnx\nprecision: fp32\nbatch: {min: 4, max: 2}\n", "batch"),
        (
            "device_class: a\nformat: onnx\nprecision: fp32\nvalidation: {min_cosine: 1}\n",
            "validation",
        ),
        ("- a list\n", "mapping"),
        ("extends: no-such-profile\n", "extends unknown profile"),
    ],
)
def test_bad_profile_files_name_the_field(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert complaint in str(caught.value)
    assert str(path) in str(caught.value)


def test_profiles_extending_each_other_in_a_loop_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ProfileError, match="loop"):
        load_profile(tmp_path / "a.yaml")


def test_a_missing_profile_file_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "nope.yaml")


def test_load_profiles_needs_one_and_refuses_repeats() -> None:
    with pytest.raises(ProfileError, match="at least one profile"):
        load_profiles([])
    with pytest.raises(ProfileError, match="more than once: cloud-cpu-onnx"):
        load_profiles(["cloud-cpu-onnx", "cloud-cpu-onnx"])


def test_every_supported_precision_has_default_thresholds() -> None:
    precisions = {p for allowed in SUPPORTED_PRECISIONS.values() for p in allowed}
    assert precisions == set(DEFAULT_THRESHOLDS)
    # tighter gates for more faithful precisions
    order = ["fp32", "fp16", "int8-dynamic", "int8"]
    cosines = [DEFAULT_THRESHOLDS[p].min_cosine_similarity for p in order]
    assert cosines == sorted(cosines, reverse=True)


def test_a_shadowing_user_profile_may_extend_the_builtin_of_its_name(tmp_path: Path) -> None:
    (tmp_path / "rpi4-litert-int8.yaml").write_text(
        "extends: rpi4-litert-int8\ncalibration_samples: 32\n"
    )
    profile = load_profile("rpi4-litert-int8", dirs=[tmp_path])
    assert profile.calibration_samples == 32
    assert (profile.format, profile.precision, profile.threads) == ("tflite", "int8", 4)
