"""Float16 ONNX made with onnx alone, and input layout changes, run in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.errors import ConversionError
from converters.targets.onnx import transpose_inputs
from converters.targets.onnx_fp16 import to_float16

RNG = np.random.default_rng(0)


def small_cnn() -> onnx.ModelProto:
    """NCHW [n, 3, 16, 16] -> conv -> relu -> resize x2 (blocked op) -> pool -> dense -> softmax."""
    weights = {
        "w": RNG.normal(0, 0.2, (16, 3, 3, 3)).astype(np.float32),
        "b": RNG.normal(0, 0.1, (16,)).astype(np.float32),
        "scales": np.array([1, 1, 2, 2], np.float32),
        "dense": RNG.normal(0, 0.3, (16, 10)).astype(np.float32),
        "bias": RNG.normal(0, 0.1, (10,)).astype(np.float32),
        "big": np.full((10,), 1e6, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Resize", ["r", "", "scales"], ["u"], mode="nearest"),
        helper.make_node("GlobalAveragePool", ["u"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "dense", "bias"], ["logits"]),
        helper.make_node("Min", ["logits", "big"], ["clipped"]),
        helper.make_node("Softmax", ["clipped"], ["probs"]),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_float16_model_keeps_float32_io_and_halves_the_weights() -> None:
    model = small_cnn()
    half = to_float16(model)
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    kinds = {i.name: i.data_type for i in half.graph.initializer}
    assert kinds["w"] == kinds["dense"] == TensorProto.FLOAT16
    assert kinds["scales"] == TensorProto.FLOAT  # only Resize reads it, and Resize stays float32
    assert kinds["big"] == TensorProto.FLOAT  # only Min reads it
    weight_bytes = sum(i.ByteSize() for i in model.graph.initializer)
    half_bytes = sum(i.ByteSize() for i in half.graph.initializer)
    assert half_bytes < 0.6 * weight_bytes
    assert model.graph.initializer[0].data_type == TensorProto.FLOAT  # the source is untouched

    x = RNG.random((8, 3, 16, 16), dtype=np.float32)
    expected = run(model, x)
    got = run(half, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.875


def test_weights_beyond_float16_range_are_clipped_not_infinite() -> None:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.array([1e9, -1e9], np.float32), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    half = to_float16(model)
    k = numpy_helper.to_array(half.graph.initializer[0])
    assert np.isfinite(k).all()
    assert k[0] == np.float16(65504)


def test_control_flow_is_refused() -> None:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])],
        "branch",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        "cond",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConversionError, match="subgraph"):
        to_float16(model)


def test_transposed_inputs_take_the_other_layout() -> None:
    model = small_cnn()
    nhwc = transpose_inputs(model, {"x": (0, 2, 3, 1)})
    dims = nhwc.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == ["n", 16, 16, 3]
    x = RNG.random((4, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(
        run(nhwc, np.ascontiguousarray(x.transpose(0, 2, 3, 1))), run(model, x), rtol=1e-6
    )
    assert transpose_inputs(model, {}) is model
