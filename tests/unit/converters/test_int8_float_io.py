"""Full int8 with float inputs and outputs (``int8_io``): a trained 100-class model through the
default gates, a near-uniform 1,000-class softmax that int8 outputs cannot carry, per-output
types, and the profile rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.build import BuildRequest, BuildResult, build
from converters.errors import ProfileError
from converters.profiles import load_profile
from protocols import Datatype
from tests.support import models
from tests.unit.converters.sources import ShapesSource, ensure_shapes100_source

GATED = ["rpi4-litert-fp16", "rpi3-litert-int8-dynamic", "rpi4-litert-int8-float-io"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[ShapesSource, Path]:
    source: ShapesSource = models.require(ensure_shapes100_source)
    root = tmp_path_factory.mktemp("shapes100")
    x_train, x_test, _ = source.arrays()
    np.savez(root / "samples.npz", image=x_test)
    np.savez(root / "calibration.npz", image=x_train[:500])
    return source, root


def build_shapes(shapes: tuple[ShapesSource, Path], profiles: list[str], out: str) -> BuildResult:
    source, root = shapes
    return build(
        BuildRequest(
            source=source.keras,
            profiles=profiles,
            out_dir=root / out,
            samples=root / "samples.npz",
            calibration=root / "calibration.npz",
            latency=None,
        )
    )


def test_100_classes_pass_the_default_gates_in_fp16_int8_dynamic_and_int8_with_float_io(
    shapes: tuple[ShapesSource, Path],
) -> None:
    result = build_shapes(shapes, GATED, "gated")  # raises when any default gate is missed
    figures = {a.profile.name: a.manifest.validation for a in result.artifacts}
    for name, report in figures.items():
        assert report.passed, name
        assert report.samples == 2000
        assert report.thresholds == load_profile(name).thresholds  # the defaults, untouched
    fp16 = figures["rpi4-litert-fp16"].outputs[0]
    full = figures["rpi4-litert-int8-float-io"].outputs[0]
    assert fp16.top1_agreement is not None
    assert fp16.top1_agreement >= 0.995
    assert full.top1_agreement is not None
    assert full.top1_agreement >= 0.97
    assert full.cosine_similarity >= 0.98
    manifest = result.artifacts[-1].manifest
    assert [t.datatype for t in manifest.inputs] == [Datatype.FP32]
    assert [t.datatype for t in manifest.outputs] == [Datatype.FP32]
    assert manifest.outputs[0].quantization is None


def test_int8_outputs_are_reported_beside_float_outputs(
    shapes: tuple[ShapesSource, Path],
) -> None:
    result = build_shapes(shapes, ["rpi4-litert-int8"], "int8-io")
    manifest = result.artifacts[0].manifest
    assert [t.datatype for t in manifest.outputs] == [Datatype.INT8]
    quantization = manifest.outputs[0].quantization
    assert quantization is not None
    assert quantization.scale == [1 / 256]
    assert manifest.validation.passed


def near_uniform_softmax(path: Path, classes: int = 1000) -> Path:
    """A 1,000-class softmax over small logits: every probability near 1/1000, below one int8
    step of a softmax output (1/256)."""
    import keras

    rng = np.random.default_rng(0)
    inputs = keras.Input((32,), name="features")
    dense = keras.layers.Dense(classes)
    outputs = keras.layers.Softmax()(dense(inputs))
    model = keras.Model(inputs, outputs)
    dense.set_weights([rng.normal(0, 0.3, (32, classes)), np.zeros(classes)])
    model.save(path)
    return path


def test_float_outputs_keep_a_many_class_softmax_that_int8_outputs_flatten(
    tmp_path: Path,
) -> None:
    source = near_uniform_softmax(tmp_path / "uniform.keras")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "samples.npz", features=rng.uniform(-1, 1, (64, 32)).astype(np.float32))
    np.savez(tmp_path / "cal.npz", features=rng.uniform(-1, 1, (128, 32)).astype(np.float32))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    ungated = "validation: {min_top1_agreement: null, min_cosine_similarity: null}\n"
    for name in ("rpi4-litert-int8", "rpi4-litert-int8-float-io"):
        (profiles / f"{name}.yaml").write_text(f"extends: {name}\n{ungated}")
    result = build(
        BuildRequest(
            source=source,
            profiles=["rpi4-litert-int8", "rpi4-litert-int8-float-io"],
            out_dir=tmp_path / "out",
            samples=tmp_path / "samples.npz",
            calibration=tmp_path / "cal.npz",
            profile_dirs=[profiles],
            latency=None,
        )
    )
    int8_out, float_out = (a.manifest.validation.outputs[0] for a in result.artifacts)
    assert int8_out.cosine_similarity < 0.9  # probabilities near 1/1000 in steps of 1/256
    assert float_out.cosine_similarity >= 0.99  # the softmax in float32
    assert float_out.cosine_similarity > int8_out.cosine_similarity


def two_outputs(path: Path) -> Path:
    """Logits and probabilities of one small classifier: ``output_0`` and ``output_1``."""
    import keras

    inputs = keras.Input((16,), name="features")
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    logits = keras.layers.Dense(10)(hidden)
    model = keras.Model(inputs, [logits, keras.layers.Softmax()(logits)])
    model.save(path)
    return path


def test_each_output_gets_its_own_type(tmp_path: Path) -> None:
    source = two_outputs(tmp_path / "two.keras")
    profile = tmp_path / "mixed.yaml"
    profile.write_text(
        "extends: rpi4-litert-int8\nname: mixed\n"
        "int8_io: {inputs: float, outputs: {output_0: int8, output_1: float}}\n"
    )
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "cal.npz", features=rng.normal(0, 1, (128, 16)).astype(np.float32))
    result = build(
        BuildRequest(
            source=source,
            profiles=[profile],
            out_dir=tmp_path / "out",
            calibration=tmp_path / "cal.npz",
            latency=None,
        )
    )
    manifest = result.artifacts[0].manifest
    assert [t.datatype for t in manifest.inputs] == [Datatype.FP32]
    types = {t.name: t.datatype for t in manifest.outputs}
    assert types == {"output_0": Datatype.INT8, "output_1": Datatype.FP32}
    assert manifest.validation.passed


def test_int8_io_names_an_output_the_source_lacks(tmp_path: Path) -> None:
    source = two_outputs(tmp_path / "two.keras")
    profile = tmp_path / "typo.yaml"
    profile.write_text(
        "extends: rpi4-litert-int8\nname: typo\nint8_io: {outputs: {probs: float}}\n"
    )
    with pytest.raises(ProfileError, match=r"int8_io\.outputs names probs"):
        build(BuildRequest(source=source, profiles=[profile], out_dir=tmp_path / "o", latency=None))
    assert not (tmp_path / "o").exists()


def test_int8_io_only_on_full_int8_tflite(tmp_path: Path) -> None:
    profile = tmp_path / "bad.yaml"
    profile.write_text("extends: rpi4-litert-fp16\nname: bad\nint8_io: float\n")
    with pytest.raises(ProfileError, match="int8_io applies to full-int8 TFLite profiles only"):
        load_profile(profile)
    shorthand = load_profile("rpi4-litert-int8-float-io").int8_io
    assert (shorthand.inputs, shorthand.outputs, shorthand.float_ops) == (
        "float",
        "float",
        ("SOFTMAX",),
    )
