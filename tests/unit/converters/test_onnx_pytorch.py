"""ONNX sources to TFLite through onnx2tf: a PyTorch CNN with NCHW input exported with
``torch.onnx.export``, an operator onnx2tf has no converter for, and PyTorch files refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from onnx import TensorProto, helper

from converters.build import BuildRequest, build
from converters.cli import main
from converters.errors import ConversionError, SourceError, TargetUnavailableError
from converters.profiles import load_profile
from converters.targets.tflite import unsupported_operators
from protocols import Datatype

PROFILES = ["rpi4-litert-fp16", "rpi4-litert-int8", "rpi4-litert-int8-float-io"]


class SmallCnn(torch.nn.Module):
    """NCHW [n, 3, 16, 16] -> two convolutions -> global mean -> 10-way softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.dense = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return torch.softmax(self.dense(x.mean((2, 3))), -1)


def patterns(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Generated images with a learnable structure: each of 10 classes is a fixed random
    pattern in [0, 1], seen at a random contrast with noise; NCHW float32."""
    prototypes = np.random.default_rng(42).random((10, 3, 16, 16), dtype=np.float32)
    labels = rng.integers(0, 10, count)
    contrast = rng.uniform(0.5, 1.0, (count, 1, 1, 1)).astype(np.float32)
    noise = rng.normal(0, 0.15, (count, 3, 16, 16)).astype(np.float32)
    images = np.clip(0.5 + contrast * (prototypes[labels] - 0.5) + noise, 0, 1)
    return images.astype(np.float32), labels


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SmallCnn, Path]:
    """The CNN trained for a few seconds on :func:`patterns`, exported to ONNX."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = SmallCnn()
    x_train, y_train = patterns(2048, rng)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        for start in range(0, len(x_train), 64):
            probs = model(torch.from_numpy(x_train[start : start + 64]))
            target = torch.from_numpy(y_train[start : start + 64])
            loss = torch.nn.functional.nll_loss(torch.log(probs + 1e-7), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    root = tmp_path_factory.mktemp("pytorch")
    path = root / "cnn.onnx"
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 16, 16),),
        str(path),
        input_names=["pixels"],
        output_names=["probs"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,  # one file, as an upload to the hub is
        verbose=False,
    )
    assert [p.name for p in root.iterdir()] == ["cnn.onnx"]  # no weights file beside it
    np.savez(root / "samples.npz", pixels=patterns(256, rng)[0])
    np.savez(root / "calibration.npz", pixels=x_train[:128])
    return model, path


def test_a_pytorch_cnn_converts_to_fp16_and_full_int8_through_the_default_gates(
    exported: tuple[SmallCnn, Path],
) -> None:
    model, path = exported
    root = path.parent
    result = build(  # raises when any default gate is missed
        BuildRequest(
            source=path,
            profiles=PROFILES,
            out_dir=root / "out",
            samples=root / "samples.npz",
            calibration=root / "calibration.npz",
            latency=None,
        )
    )
    x = np.load(root / "samples.npz")["pixels"]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert len(set(expected.argmax(1))) >= 5  # top-1 agreement is not one class every time

    for artifact in result.artifacts:
        manifest = artifact.manifest
        name = artifact.profile.name
        assert manifest.source.format == "onnx"
        assert manifest.tools["onnx2tf"].startswith("1.28.")
        assert manifest.validation.passed, name
        assert manifest.validation.samples == 256
        assert manifest.validation.thresholds == load_profile(name).thresholds
        # onnx2tf moves the channel axis last; the ONNX names stay
        [pixels] = manifest.inputs
        assert (pixels.name, pixels.layout, pixels.shape) == ("pixels", "NHWC", [-1, 16, 16, 3])
        assert [(t.name, t.shape) for t in manifest.outputs] == [("probs", [-1, 10])]
        on_disk = json.loads((artifact.directory / "manifest.json").read_text())
        assert on_disk["inputs"][0]["layout"] == "NHWC"

    fp16, int8, float_io = (a.manifest for a in result.artifacts)
    assert [t.datatype for t in int8.inputs + int8.outputs] == [Datatype.INT8, Datatype.INT8]
    assert [t.datatype for t in float_io.inputs + float_io.outputs] == [Datatype.FP32] * 2

    # the fp16 artifact, fed channels-last, answers as the PyTorch model does
    interpreter = Interpreter(model_path=str(result.artifacts[0].file))
    runner = interpreter.get_signature_runner("serving_default")
    got = runner(pixels=np.ascontiguousarray(x[:8].transpose(0, 2, 3, 1)))["probs"]
    np.testing.assert_allclose(got, expected[:8], atol=2e-3)
    assert fp16.validation.outputs[0].top1_agreement == 1.0


def test_a_channels_last_onnx_input_keeps_its_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"]),
        ],
        "nhwc",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 8, 8, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 10])],
        initializer=[
            onnx.numpy_helper.from_array(rng.normal(0, 1, (64, 10)).astype(np.float32), "w"),
            onnx.numpy_helper.from_array(np.zeros(10, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "nhwc.onnx")
    result = build(
        BuildRequest(
            source=tmp_path / "nhwc.onnx",
            profiles=["rpi4-litert-fp16"],
            out_dir=tmp_path / "out",
            latency=None,
        )
    )
    [image] = result.artifacts[0].manifest.inputs
    assert (image.layout, image.shape) == ("NHWC", [-1, 8, 8, 1])
    assert result.artifacts[0].manifest.validation.passed


def test_a_channels_first_output_keeps_the_source_layout(tmp_path: Path) -> None:
    """onnx2tf makes a 4-D output channels-last too; the artifact gives it as the source does."""
    rng = np.random.default_rng(4)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "dense_map",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5, 16, 16])],
        initializer=[
            onnx.numpy_helper.from_array(rng.normal(0, 0.3, (5, 3, 3, 3)).astype(np.float32), "w")
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "map.onnx")
    result = build(
        BuildRequest(
            source=tmp_path / "map.onnx",
            profiles=["rpi4-litert-fp16"],
            out_dir=tmp_path / "out",
            latency=None,
        )
    )
    manifest = result.artifacts[0].manifest
    assert [(t.name, t.shape, t.layout) for t in manifest.inputs] == [
        ("x", [-1, 16, 16, 3], "NHWC")
    ]
    assert [(t.name, t.shape) for t in manifest.outputs] == [("y", [-1, 5, 16, 16])]
    assert manifest.validation.outputs[0].cosine_similarity > 0.999


def lp_pool(path: Path) -> Path:
    """An ONNX model of one LpPool node, which onnx2tf has no converter for."""
    graph = helper.make_graph(
        [helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2], p=3)],
        "lp_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 7, 7])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_a_model_onnx2tf_cannot_convert_exits_6_with_the_reason_and_writes_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    source = lp_pool(tmp_path / "lp.onnx")
    assert unsupported_operators(onnx.load(source)) == ["LpPool"]
    out = tmp_path / "out"
    code = main(["build", str(source), "-p", "rpi4-litert-fp16", "--out", str(out), "--json"])
    assert code == TargetUnavailableError.exit_code == 6
    error = json.loads(capfd.readouterr().out)["error"]
    assert error["kind"] == "TargetUnavailableError"
    assert "no converter for the operator(s) LpPool" in error["message"]
    assert not out.exists()


def one_node(path: Path, node: onnx.NodeProto, x: list[Any], y: list[Any]) -> Path:
    graph = helper.make_graph(
        [node],
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_a_failure_inside_onnx2tf_exits_6_with_its_reason(tmp_path: Path) -> None:
    # onnx2tf has a converter for Unique, which raises on the sorted form
    source = one_node(
        tmp_path / "unique.onnx", helper.make_node("Unique", ["x"], ["y"], sorted=1), ["n", 4], [8]
    )
    out = tmp_path / "out"
    with pytest.raises(TargetUnavailableError) as caught:
        build(BuildRequest(source=source, profiles=["rpi4-litert-fp16"], out_dir=out))
    assert caught.value.exit_code == 6
    assert caught.value.message.startswith("unique.onnx: onnx2tf 1.28.")
    assert "Sort option in Unique ops is not implemented" in caught.value.message
    assert "\x1b" not in caught.value.message
    assert not out.exists()


def test_an_operator_litert_lacks_names_it(tmp_path: Path) -> None:
    # onnx2tf converts Det to TensorFlow's MatrixDeterminant, which LiteRT has no kernel for
    source = one_node(
        tmp_path / "det.onnx", helper.make_node("Det", ["x"], ["y"]), ["n", 3, 3], ["n"]
    )
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as caught:
        build(BuildRequest(source=source, profiles=["rpi4-litert-fp16"], out_dir=out))
    assert caught.value.exit_code == 4
    assert "LiteRT has no built-in operator for MatrixDeterminant" in caught.value.message
    assert not out.exists()


def test_an_onnx_target_still_takes_what_onnx2tf_cannot(tmp_path: Path) -> None:
    source = lp_pool(tmp_path / "lp.onnx")
    result = build(
        BuildRequest(
            source=source, profiles=["cloud-cpu-onnx"], out_dir=tmp_path / "out", latency=None
        )
    )
    assert result.artifacts[0].manifest.validation.passed


def test_pytorch_files_are_refused_naming_the_onnx_route(
    exported: tuple[SmallCnn, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = exported
    program = tmp_path / "cnn.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(1, 3, 16, 16),)), str(program))
    archive = tmp_path / "cnn.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(program, "model/cnn.pt2")
    for given in (program, archive):
        out = tmp_path / f"out-{given.suffix[1:]}"
        code = main(["build", str(given), "-p", "rpi4-litert-fp16", "--out", str(out)])
        assert code == SourceError.exit_code == 3
        message = capsys.readouterr().err
        assert "PyTorch file (an exported program)" in message
        assert "torch.onnx.export" in message
        assert not out.exists()
