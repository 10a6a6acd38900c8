"""Every CPU target built from a conv net trained on the digits, checked in the runtimes that
serve it (LiteRT and ONNX Runtime, driven here directly, not through the converter)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.artifact import inspect_artifact, validate_artifact
from converters.build import BuildRequest, BuildResult, build
from converters.errors import (
    ProfileError,
    TargetUnavailableError,
    ValidationFailedError,
)
from protocols import ArtifactManifest, Datatype
from tests.unit.converters.sources import DigitsSource

CPU_PROFILES = {
    "x86-gateway-litert-fp32": ("tflite", "fp32"),
    "rpi4-litert-fp16": ("tflite", "fp16"),
    "rpi3-litert-int8-dynamic": ("tflite", "int8-dynamic"),
    "rpi4-litert-int8": ("tflite", "int8"),
    "cloud-cpu-onnx": ("onnx", "fp32"),
    "cloud-cpu-onnx-fp16": ("onnx", "fp16"),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    value = x
    if inp["dtype"] == np.int8:
        scale, zero = inp["quantization"]
        value = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], value)
    interpreter.invoke()
    result = interpreter.get_tensor(out["index"])
    if out["dtype"] == np.int8:
        scale, zero = out["quantization"]
        result = (result.astype(np.float32) - zero) * scale
    return result


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def run_artifact(manifest: ArtifactManifest, folder: Path, x: np.ndarray) -> np.ndarray:
    path = folder / manifest.file
    return run_tflite(path, x) if manifest.format == "tflite" else run_onnx(path, x)


class Digits:
    def __init__(self, source: DigitsSource, root: Path) -> None:
        import keras

        self.source = source
        x_train, self.x_test, self.y_test = source.arrays()
        self.calibration = root / "calibration.npz"
        np.savez(self.calibration, pixels=x_train[:400])
        self.samples = root / "samples.npz"
        np.savez(self.samples, x=self.x_test)
        self.model = keras.models.load_model(source.keras, compile=False)
        self.expected = np.asarray(self.model(self.x_test, training=False))
        self.out = root / "artifacts"

    def manifest(self, profile: str) -> ArtifactManifest:
        return ArtifactManifest.model_validate_json(
            (self.out / profile / "manifest.json").read_text()
        )


@pytest.fixture(scope="module")
def digits(digits_source: DigitsSource, tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return Digits(digits_source, tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def built(digits: Digits) -> BuildResult:
    return build(
        BuildRequest(
            source=digits.source.keras,
            profiles=list(CPU_PROFILES),
            out_dir=digits.out,
            calibration=digits.calibration,
            samples=digits.samples,
            version="7",
        )
    )


def test_one_artifact_and_manifest_per_profile(built: BuildResult, digits: Digits) -> None:
    assert [a.profile.name for a in built.artifacts] == list(CPU_PROFILES)
    assert built.warnings == ()  # real calibration and samples given: nothing to warn about
    assert sorted(p.name for p in digits.out.iterdir()) == sorted(CPU_PROFILES)  # no leftovers
    for artifact in built.artifacts:
        files = sorted(p.name for p in artifact.directory.iterdir())
        assert files == sorted(["manifest.json", artifact.file.name])


@pytest.mark.parametrize("profile", CPU_PROFILES)
def test_every_artifact_runs_in_its_runtime(
    built: BuildResult, digits: Digits, profile: str
) -> None:
    manifest = digits.manifest(profile)
    assert (manifest.format, manifest.precision) == CPU_PROFILES[profile]
    got = run_artifact(manifest, digits.out / profile, digits.x_test)
    assert got.shape == digits.expected.shape
    agreement = np.mean(got.argmax(1) == digits.expected.argmax(1))
    assert agreement >= 0.98
    accuracy = np.mean(got.argmax(1) == digits.y_test)
    assert accuracy >= 0.9


def test_sizes_shrink_with_precision(built: BuildResult, digits: Digits) -> None:
    size = {p: digits.manifest(p).size_bytes for p in CPU_PROFILES}
    fp32 = size["x86-gateway-litert-fp32"]
    assert fp32 > 500_000  # big enough that the weights, not the header, set the size
    assert size["rpi4-litert-fp16"] <= 0.52 * fp32
    assert size["rpi4-litert-int8"] <= 0.30 * fp32
    assert size["rpi3-litert-int8-dynamic"] <= 0.30 * fp32
    assert size["cloud-cpu-onnx-fp16"] <= 0.52 * size["cloud-cpu-onnx"]


def test_fidelity_on_the_digits_test_set(built: BuildResult, digits: Digits) -> None:
    for profile, minimum in (("rpi4-litert-fp16", 0.995), ("rpi4-litert-int8", 0.98)):
        got = run_artifact(digits.manifest(profile), digits.out / profile, digits.x_test)
        agreement = float(np.mean(got.argmax(1) == digits.expected.argmax(1)))
        assert agreement >= minimum, profile
        reported = digits.manifest(profile).validation.outputs[0].top1_agreement
        assert reported == pytest.approx(agreement, abs=1 / len(got))


def test_manifests_describe_their_artifacts(built: BuildResult, digits: Digits) -> None:
    for profile, (format_name, precision) in CPU_PROFILES.items():
        manifest = digits.manifest(profile)
        folder = digits.out / profile
        assert manifest.name == "digits_cnn"
        assert manifest.version == "7"
        assert manifest.profile == profile
        assert manifest.sha256 == sha256(folder / manifest.file)
        assert manifest.size_bytes == (folder / manifest.file).stat().st_size
        assert manifest.source.sha256 == sha256(digits.source.keras)
        assert manifest.source.format == "keras"
        assert [t.name for t in manifest.inputs] == ["pixels"]
        assert [t.name for t in manifest.outputs] == ["output_0"]
        assert manifest.inputs[0].shape == [-1, 64]
        report = manifest.validation
        assert report.passed
        assert report.failures == []
        assert report.samples == len(digits.x_test)
        assert report.samples_origin == "file"
        assert report.latency is not None
        assert 0 < report.latency.p50_ms <= report.latency.p95_ms
        assert "tensorflow" in manifest.tools or "tensorflow-cpu" in manifest.tools
        if format_name == "onnx":
            assert "tf2onnx" in manifest.tools
        if precision == "int8":
            assert manifest.inputs[0].datatype is Datatype.INT8
            assert manifest.inputs[0].quantization is not None
            assert manifest.calibration is not None
            assert manifest.calibration.origin == "file"
            assert manifest.calibration.sha256 == sha256(digits.calibration)
        else:
            assert manifest.inputs[0].datatype is Datatype.FP32
            assert manifest.calibration is None
        assert json.loads((folder / "manifest.json").read_text())["sha256"] == manifest.sha256


def test_inspect_and_validate_an_artifact_again(
    built: BuildResult, digits: Digits, tmp_path: Path
) -> None:
    folder = digits.out / "rpi4-litert-int8"
    assert inspect_artifact(folder).problems == ()
    report = validate_artifact(folder, source=digits.source.keras, samples=digits.samples)
    assert report.passed
    assert report.outputs[0].top1_agreement is not None
    assert report.outputs[0].top1_agreement >= 0.98

    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    data = bytearray((tampered / "model.tflite").read_bytes())
    data[-100] ^= 0xFF
    (tampered / "model.tflite").write_bytes(bytes(data))
    assert any("sha256" in p for p in inspect_artifact(tampered).problems)
    with pytest.raises(ValidationFailedError, match="does not match its manifest"):
        validate_artifact(tampered)


def test_a_savedmodel_source(digits: Digits, tmp_path: Path) -> None:
    saved = tmp_path / "digits_savedmodel"
    digits.model.export(str(saved), verbose=False)
    result = build(
        BuildRequest(
            source=saved,
            profiles=["x86-gateway-litert-fp32", "cloud-cpu-onnx"],
            out_dir=tmp_path / "out",
            samples=digits.samples,
        )
    )
    for artifact in result.artifacts:
        assert artifact.manifest.source.format == "saved_model"
        got = run_artifact(artifact.manifest, artifact.directory, digits.x_test)
        np.testing.assert_allclose(got, digits.expected, atol=1e-5)


def test_an_onnx_source(built: BuildResult, digits: Digits, tmp_path: Path) -> None:
    onnx_source = tmp_path / "digits.onnx"
    shutil.copy(digits.out / "cloud-cpu-onnx" / "model.onnx", onnx_source)
    result = build(
        BuildRequest(
            source=onnx_source,
            profiles=["cloud-cpu-onnx-fp16"],
            out_dir=tmp_path / "out",
            samples=digits.samples,
        )
    )
    (artifact,) = result.artifacts
    assert artifact.manifest.source.format == "onnx"
    got = run_onnx(artifact.file, digits.x_test)
    assert np.mean(got.argmax(1) == digits.expected.argmax(1)) >= 0.995


def test_tflite_from_onnx_names_what_to_install(
    built: BuildResult, digits: Digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx2tf", None)  # as where it is not installed
    onnx_source = tmp_path / "digits.onnx"
    shutil.copy(digits.out / "cloud-cpu-onnx" / "model.onnx", onnx_source)
    out = tmp_path / "out"
    with pytest.raises(TargetUnavailableError, match="needs onnx2tf") as caught:
        build(BuildRequest(source=onnx_source, profiles=["rpi4-litert-fp16"], out_dir=out))
    assert caught.value.exit_code == 6
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT installed")
def test_tensorrt_without_tensorrt_names_the_gpu_extra(digits: Digits, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TargetUnavailableError, match=r"hybrid-inference\[gpu\]"):
        build(
            BuildRequest(source=digits.source.keras, profiles=["cloud-gpu-trt-fp16"], out_dir=out)
        )
    assert list(out.iterdir()) == []  # nothing half-written, no staging left


def test_existing_artifacts_are_kept_unless_overwritten(
    built: BuildResult, digits: Digits, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(digits.out / "rpi4-litert-fp16", out / "rpi4-litert-fp16")
    before = sha256(out / "rpi4-litert-fp16" / "manifest.json")
    with pytest.raises(ProfileError, match="--overwrite"):
        build(BuildRequest(source=digits.source.keras, profiles=["rpi4-litert-fp16"], out_dir=out))

    strict = tmp_path / "rpi4-litert-fp16.yaml"  # same name, impossible gate
    strict.write_text("extends: rpi4-litert-fp16\nvalidation: {max_abs_error: 0.0}\n")
    with pytest.raises(ValidationFailedError) as caught:
        build(
            BuildRequest(source=digits.source.keras, profiles=[strict], out_dir=out, overwrite=True)
        )
    assert "max abs error" in str(caught.value)
    assert not caught.value.reports["rpi4-litert-fp16"].passed
    assert sha256(out / "rpi4-litert-fp16" / "manifest.json") == before  # untouched
    assert sorted(p.name for p in out.iterdir()) == ["rpi4-litert-fp16"]

    result = build(
        BuildRequest(
            source=digits.source.keras,
            profiles=["rpi4-litert-fp16"],
            out_dir=out,
            overwrite=True,
            version="8",
        )
    )
    assert result.artifacts[0].manifest.version == "8"
    assert sorted(p.name for p in out.iterdir()) == ["rpi4-litert-fp16"]
    assert "no --samples file" in " ".join(result.warnings)


def test_generated_calibration_is_announced(digits: Digits, tmp_path: Path) -> None:
    result = build(
        BuildRequest(
            source=digits.source.keras,
            profiles=["rpi4-litert-int8"],
            out_dir=tmp_path / "out",
            samples=digits.samples,
            latency=None,
        )
    )
    (artifact,) = result.artifacts
    assert any("no --calibration file" in w and "rpi4-litert-int8" in w for w in result.warnings)
    assert artifact.manifest.calibration is not None
    assert artifact.manifest.calibration.origin == "generated"
    assert artifact.manifest.validation.latency is None


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras' save
def test_an_nchw_onnx_artifact_from_an_nhwc_keras_model(tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3), name="image"),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    source = tmp_path / "tiny.keras"
    model.save(source)
    profile = tmp_path / "nchw.yaml"
    profile.write_text("extends: cloud-cpu-onnx\ninput_layout: NCHW\n")
    result = build(BuildRequest(source=source, profiles=[profile], out_dir=tmp_path / "out"))
    (artifact,) = result.artifacts
    (image,) = artifact.manifest.inputs
    assert (image.shape, image.layout) == ([-1, 3, 8, 8], "NCHW")
    x = np.random.default_rng(0).random((6, 8, 8, 3), dtype=np.float32)
    got = run_onnx(artifact.file, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(got, np.asarray(model(x)), atol=1e-5)
    assert artifact.manifest.validation.passed


@pytest.mark.gpu
@pytest.mark.parametrize("profile", ["cloud-gpu-trt-fp16", "jetson-orin-trt-int8"])
def test_tensorrt_plans_on_a_gpu(digits: Digits, tmp_path: Path, profile: str) -> None:
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda.driver")
    result = build(
        BuildRequest(
            source=digits.source.keras,
            profiles=[profile],
            out_dir=tmp_path / "out",
            calibration=digits.calibration,
            samples=digits.samples,
        )
    )
    (artifact,) = result.artifacts
    assert artifact.file.name == "model.plan"
    assert artifact.manifest.format == "tensorrt"
    assert artifact.manifest.validation.passed
    assert "tensorrt" in artifact.manifest.tools
