"""MobileNetV2 (``weights=None``) through the CPU targets.

One float16 TFLite build runs in the default suite; the other targets are ``slow`` (minutes on
two cores). The network's weights are random, so its 1,000 classes are near-ties and top-1
agreement says nothing about a conversion: these builds gate on cosine similarity only (and
full int8, whose 1/256 output step is as large as the probabilities themselves, on nothing), and
fidelity is judged on the digits model instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.build import BuildRequest, BuildResult, build
from protocols import ArtifactManifest
from tests.support import models
from tests.unit.converters.sources import ensure_mobilenet_v2, image_samples

RELAXED = {
    "mnv2-fp32": ("x86-gateway-litert-fp32", "validation: {min_top1_agreement: null}"),
    "mnv2-fp16": ("rpi4-litert-fp16", "validation: {min_top1_agreement: null}"),
    "mnv2-int8-dynamic": ("rpi3-litert-int8-dynamic", "validation: {min_top1_agreement: null}"),
    "mnv2-int8": (
        "rpi4-litert-int8",
        (
            "calibration_samples: 32\n"
            "validation: {min_top1_agreement: null, min_cosine_similarity: null}"
        ),
    ),
    "mnv2-onnx": ("cloud-cpu-onnx", "validation: {min_top1_agreement: null}"),
    "mnv2-onnx-fp16": ("cloud-cpu-onnx-fp16", "validation: {min_top1_agreement: null}"),
}


class MobileNet:
    def __init__(self, root: Path) -> None:
        self.source: Path = models.require(ensure_mobilenet_v2)
        self.profiles = root / "profiles"
        self.profiles.mkdir()
        for name, (base, extra) in RELAXED.items():
            (self.profiles / f"{name}.yaml").write_text(f"extends: {base}\n{extra}\n")
        self.samples = image_samples(root / "samples.npz", 8)
        self.calibration = image_samples(root / "calibration.npz", 32, seed=1)
        with np.load(self.samples) as data:
            self.x = data["x"]
        self.out = root / "artifacts"

    def build(self, profiles: list[str]) -> BuildResult:
        return build(
            BuildRequest(
                source=self.source,
                profiles=profiles,
                out_dir=self.out,
                samples=self.samples,
                calibration=self.calibration,
                profile_dirs=[self.profiles],
                overwrite=True,
            )
        )

    def reference(self) -> np.ndarray:
        import keras

        model = keras.models.load_model(self.source, compile=False)
        return np.asarray(model(self.x, training=False))


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> MobileNet:
    return MobileNet(tmp_path_factory.mktemp("mobilenet"))


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    if inp["dtype"] == np.int8:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    result = interpreter.get_tensor(out["index"])
    if out["dtype"] == np.int8:
        scale, zero = out["quantization"]
        result = (result.astype(np.float32) - zero) * scale
    return result


def test_float16_tflite(mobilenet: MobileNet) -> None:
    (artifact,) = mobilenet.build(["mnv2-fp16"]).artifacts
    manifest = artifact.manifest
    assert (manifest.format, manifest.precision) == ("tflite", "fp16")
    assert manifest.inputs[0].shape == [-1, 224, 224, 3]
    assert manifest.inputs[0].layout == "NHWC"
    assert manifest.outputs[0].shape == [-1, 1000]
    # float16 weights: 3.5 M parameters at 2 bytes, plus the graph
    assert 6_500_000 < manifest.size_bytes < 7_600_000
    got = run_tflite(artifact.file, mobilenet.x)
    expected = mobilenet.reference()
    np.testing.assert_allclose(got, expected, atol=2e-4)
    report = manifest.validation
    assert report.passed
    assert report.outputs[0].cosine_similarity > 0.9999


@pytest.mark.slow
def test_every_cpu_target(mobilenet: MobileNet) -> None:
    result = mobilenet.build([n for n in RELAXED if n != "mnv2-fp16"] + ["mnv2-fp16"])
    manifests: dict[str, ArtifactManifest] = {a.profile.name: a.manifest for a in result.artifacts}
    expected = mobilenet.reference()
    for artifact in result.artifacts:
        if artifact.manifest.format == "tflite":
            got = run_tflite(artifact.file, mobilenet.x)
        else:
            import onnxruntime as ort

            session = ort.InferenceSession(str(artifact.file), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: mobilenet.x})[0]
        assert got.shape == expected.shape
        assert np.isfinite(got).all()
        if artifact.manifest.precision != "int8":
            cosine = (
                (got * expected).sum(1)
                / np.linalg.norm(got, axis=1)
                / np.linalg.norm(expected, axis=1)
            )
            assert cosine.min() > 0.99, artifact.profile.name
    fp32 = manifests["mnv2-fp32"].size_bytes
    assert manifests["mnv2-fp16"].size_bytes <= 0.52 * fp32
    assert manifests["mnv2-int8"].size_bytes <= 0.30 * fp32
    assert manifests["mnv2-int8-dynamic"].size_bytes <= 0.30 * fp32
    assert manifests["mnv2-onnx-fp16"].size_bytes <= 0.52 * manifests["mnv2-onnx"].size_bytes
