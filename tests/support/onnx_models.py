"""Small ONNX models built with onnx.helper, covering the datatypes the hub serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def add_sub(path: Path, width: int = 4) -> Path:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1; FP32 [batch, width]."""
    shape = ["batch", width]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("INPUT0", "INPUT1")],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
            for n in ("OUTPUT0", "OUTPUT1")
        ],
    )
    return _save(graph, path)


def scale(path: Path, elem_type: int = TensorProto.FLOAT16, factor: float = 2.0) -> Path:
    """y = x * factor for any [batch, n] tensor of ``elem_type``."""
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", elem_type, ["batch", "n"])],
        [helper.make_tensor_value_info("y", elem_type, ["batch", "n"])],
        initializer=[numpy_helper.from_array(np.array(factor, dtype=dtype), "k")],
    )
    return _save(graph, path)


def int64_add(path: Path) -> Path:
    """sum = a + b, diff = a - b on INT64 [batch, 3]."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Sub", ["a", "b"], ["diff"]),
        ],
        "int64_add",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", 3]) for n in ("a", "b")],
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", 3])
            for n in ("sum", "diff")
        ],
    )
    return _save(graph, path)


def bool_logic(path: Path) -> Path:
    """not_a = !a, a_and_b = a & b on BOOL [batch, 5]."""
    graph = helper.make_graph(
        [
            helper.make_node("Not", ["a"], ["not_a"]),
            helper.make_node("And", ["a", "b"], ["a_and_b"]),
        ],
        "bool_logic",
        [helper.make_tensor_value_info(n, TensorProto.BOOL, ["batch", 5]) for n in ("a", "b")],
        [
            helper.make_tensor_value_info(n, TensorProto.BOOL, ["batch", 5])
            for n in ("not_a", "a_and_b")
        ],
    )
    return _save(graph, path)


def strings(path: Path) -> Path:
    """An identity on a string tensor [batch, n] (BYTES on the wire)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["batch", "n"])],
    )
    return _save(graph, path)


def classifier(
    path: Path, features: int = 64, classes: int = 10, hidden: int = 32, seed: int = 0
) -> Path:
    """softmax(relu(x W1 + b1) W2 + b2): a small MLP with fixed random weights."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["z0"]),
            helper.make_node("Add", ["z0", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.linspace(-0.1, 0.1, classes).astype(np.float32), "b2"),
        ],
    )
    return _save(graph, path)


def identity(path: Path, shape: list[int | str], elem_type: int = TensorProto.FLOAT) -> Path:
    """scores = x for a tensor of ``shape`` (a string dimension is variable, e.g. the batch):
    the outputs are whatever the test sends."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["scores"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("scores", elem_type, shape)],
    )
    return _save(graph, path)
