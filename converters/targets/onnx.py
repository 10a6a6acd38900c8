"""ONNX artifacts: tf2onnx for TensorFlow sources, the model itself for ONNX sources; float16
through :mod:`.onnx_fp16`.

tf2onnx runs on the source's serving function (``tf2onnx.convert.from_function``, which works
with Keras 3, where ``from_keras`` does not), so the ONNX model's tensors carry the same names as
the TFLite artifacts of the same source.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._libs import import_onnx, import_tensorflow, quiet_stdout
from ..errors import ConversionError, TargetUnavailableError
from ..sources import OnnxSource, Source, TensorFlowSource
from ..tensors import inverse_permutation, permute_shape
from . import TargetRequest, TargetResult
from .onnx_fp16 import to_float16

__all__ = ["convert", "onnx_model", "transpose_inputs"]

logger = logging.getLogger(__name__)

MAX_PROTOBUF_BYTES = 2_000_000_000


def convert(request: TargetRequest) -> TargetResult:
    onnx = import_onnx()
    profile = request.profile
    model, tools = onnx_model(request.source, request.perms, opset=profile.opset)
    if profile.precision == "fp16":
        model = to_float16(model)
    elif profile.precision != "fp32":
        raise ConversionError(f"{profile.name}: ONNX has no {profile.precision} target here")
    save(onnx, model, request.output)
    return TargetResult(perms=dict(request.perms), tools=tools)


def save(onnx: Any, model: Any, path: Path) -> None:
    if model.ByteSize() > MAX_PROTOBUF_BYTES:
        raise ConversionError(
            "the ONNX model is over 2 GB, which needs external data files; not supported here"
        )
    try:
        onnx.save(model, str(path))
    except Exception as exc:
        raise ConversionError(f"cannot write {path.name}: {exc}") from exc


def onnx_model(
    source: Source, perms: Mapping[str, tuple[int, ...]], *, opset: int
) -> tuple[Any, dict[str, str]]:
    """The float32 ONNX model of ``source`` with its inputs in the requested layout, and the
    versions of the tools that made it."""
    if isinstance(source, OnnxSource):
        return transpose_inputs(source.model, perms), {}
    if isinstance(source, TensorFlowSource):
        return _from_tensorflow(source, perms, opset=opset)
    raise ConversionError(f"{source.filename}: no ONNX conversion from {source.format}")


def _from_tensorflow(
    source: TensorFlowSource, perms: Mapping[str, tuple[int, ...]], *, opset: int
) -> tuple[Any, dict[str, str]]:
    import_tensorflow()
    try:
        import tf2onnx
    except ImportError as exc:
        raise TargetUnavailableError(
            f"tf2onnx is not installed ({exc}); install hybrid-inference[convert]"
        ) from exc
    function = source.serving_function(perms)
    try:
        with quiet_stdout():
            model, _ = tf2onnx.convert.from_function(
                function, input_signature=function.input_signature, opset=opset
            )
    except Exception as exc:
        raise ConversionError(f"{source.filename}: tf2onnx failed (opset {opset}): {exc}") from exc
    return model, {"tf2onnx": str(getattr(tf2onnx, "__version__", "?"))}


def transpose_inputs(model: Any, perms: Mapping[str, tuple[int, ...]]) -> Any:
    """A copy of ``model`` whose named inputs take the transposed layout: each such input gets a
    ``Transpose`` in front that restores the layout the model was built for."""
    onnx = import_onnx()
    if not perms:
        return model
    from onnx import helper

    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    graph = changed.graph
    front = []
    for value in graph.input:
        perm = perms.get(value.name)
        if perm is None:
            continue
        inner = f"{value.name}__source_layout"
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == value.name:
                    node.input[i] = inner
        for output in graph.output:
            if output.name == value.name:
                raise ConversionError(
                    f"input {value.name!r} is also an output; cannot transpose it"
                )
        dims = value.type.tensor_type.shape.dim
        old = [(d.dim_value if d.HasField("dim_value") else -1, d.dim_param) for d in dims]
        new = permute_shape(old, perm)
        for dim, (size, param) in zip(dims, new, strict=True):
            dim.Clear()
            if size >= 0 and not param:
                dim.dim_value = size
            else:
                dim.dim_param = param or "unk"
        front.append(
            helper.make_node(
                "Transpose",
                [value.name],
                [inner],
                perm=list(inverse_permutation(perm)),
                name=f"{value.name}__to_source_layout",
            )
        )
    nodes = list(front)
    for node in graph.node:
        kept = onnx.NodeProto()
        kept.CopyFrom(node)
        nodes.append(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    try:
        onnx.checker.check_model(changed)
    except Exception as exc:
        raise ConversionError(f"cannot change the input layout: {exc}") from exc
    return changed
