"""Float16 ONNX with the ``onnx`` package alone: float32 weights and tensors become float16,
while the model's inputs and outputs stay float32 behind ``Cast`` nodes, so callers feed and
read the same tensors as from the float32 model at half the weight bytes.

Operators that have no float16 form in the standard, or lose too much in it (the list in
:data:`BLOCKED_OPS`, after onnxconverter-common's), keep float32 with casts around them; their
float32-only initializers stay float32. Graphs with control flow (``If``, ``Loop``, ``Scan``)
are refused rather than converted half-way.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from .._libs import import_onnx
from ..errors import ConversionError

__all__ = ["BLOCKED_OPS", "FLOAT16_MAX", "to_float16"]

FLOAT16_MAX = 65504.0

BLOCKED_OPS = frozenset(
    {
        "ArrayFeatureExtractor",
        "Binarizer",
        "CastMap",
        "CategoryMapper",
        "DictVectorizer",
        "FeatureVectorizer",
        "Imputer",
        "LabelEncoder",
        "LinearClassifier",
        "LinearRegressor",
        "Normalizer",
        "OneHotEncoder",
        "RandomUniformLike",
        "SVMClassifier",
        "SVMRegressor",
        "Scaler",
        "TreeEnsembleClassifier",
        "TreeEnsembleRegressor",
        "ZipMap",
        "NonMaxSuppression",
        "TopK",
        "RoiAlign",
        "Resize",
        "Range",
        "CumSum",
        "Min",
        "Max",
        "Upsample",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)


def _to_half(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    half: np.ndarray[Any, Any] = np.clip(array, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    return half


def to_float16(model: Any, *, blocked: frozenset[str] = BLOCKED_OPS) -> Any:
    """A float16 copy of ``model`` (an ``onnx.ModelProto``) with float32 inputs and outputs."""
    onnx = import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    float32, float16 = TensorProto.FLOAT, TensorProto.FLOAT16
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise ConversionError(
                    f"float16 ONNX: node {node.name or node.op_type!r} holds a subgraph "
                    f"({node.op_type}); control flow is not converted, build fp32 instead"
                )
    try:
        inferred = onnx.shape_inference.infer_shapes(converted)
    except Exception as exc:
        raise ConversionError(f"float16 ONNX: shape inference failed: {exc}") from exc
    types: dict[str, int] = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type

    def is_blocked(node: Any) -> bool:
        return node.op_type in blocked or node.domain not in ("", "ai.onnx")

    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                consumers[name].append(node)

    kept32: set[str] = set()
    for index, init in enumerate(graph.initializer):
        if init.data_type != float32:
            continue
        users = consumers.get(init.name, [])
        if users and all(is_blocked(u) for u in users):
            kept32.add(init.name)
            continue
        half = numpy_helper.from_array(_to_half(numpy_helper.to_array(init)), init.name)
        graph.initializer[index].CopyFrom(half)
        types[init.name] = float16

    new_nodes: list[Any] = []
    counter = 0

    def fresh(base: str) -> str:
        nonlocal counter
        counter += 1
        return f"{base}__fp16cast{counter}"

    initializer_names = {i.name for i in graph.initializer}
    input_alias = {
        v.name: fresh(v.name)
        for v in graph.input
        if v.type.tensor_type.elem_type == float32 and v.name not in initializer_names
    }
    for name, alias in input_alias.items():
        new_nodes.append(helper.make_node("Cast", [name], [alias], to=float16, name=fresh("in")))
    output_alias = {
        v.name: fresh(v.name) for v in graph.output if v.type.tensor_type.elem_type == float32
    }
    original_of = {alias: name for name, alias in (*input_alias.items(), *output_alias.items())}

    for source_node in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(source_node)
        for i, name in enumerate(node.input):
            if name in input_alias:
                node.input[i] = input_alias[name]
            elif name in output_alias:
                node.input[i] = output_alias[name]
        for i, name in enumerate(node.output):
            if name in output_alias:
                node.output[i] = output_alias[name]
        if not is_blocked(node):
            _retype_attributes(node, onnx, numpy_helper, float32, float16)
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            original = original_of.get(name, name)
            if original in input_alias:
                node.input[i] = original  # the float32 graph input itself
            elif name and types.get(original) == float32 and original not in kept32:
                cast32 = fresh(name)
                new_nodes.append(
                    helper.make_node("Cast", [name], [cast32], to=float32, name=fresh("b"))
                )
                node.input[i] = cast32
        after = []
        for i, name in enumerate(node.output):
            if name and types.get(original_of.get(name, name)) == float32:
                raw = fresh(name)
                node.output[i] = raw
                after.append(helper.make_node("Cast", [raw], [name], to=float16, name=fresh("a")))
        new_nodes.append(node)
        new_nodes.extend(after)

    for name, alias in output_alias.items():
        new_nodes.append(helper.make_node("Cast", [alias], [name], to=float32, name=fresh("out")))

    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    try:
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise ConversionError(f"float16 ONNX: the converted model does not check: {exc}") from exc
    return converted


def _retype_attributes(node: Any, onnx: Any, numpy_helper: Any, float32: int, float16: int) -> None:
    """Casts to float32, float32 constants and ``dtype`` attributes, turned float16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == float32:
            attr.i = float16
        elif (
            node.op_type in ("Constant", "ConstantOfShape")
            and attr.name == "value"
            and attr.t.data_type == float32
        ):
            half = numpy_helper.from_array(_to_half(numpy_helper.to_array(attr.t)), attr.t.name)
            attr.t.CopyFrom(half)
        elif attr.name == "dtype" and attr.type == onnx.AttributeProto.INT and attr.i == float32:
            attr.i = float16
