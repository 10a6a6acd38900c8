"""TFLite (LiteRT) artifacts through TensorFlow's converter.

=============  ==========================================================================
precision      what the converter is asked for
=============  ==========================================================================
fp32           nothing: float32 weights and kernels
fp16           float16 weights (``supported_types=[float16]``), dequantized at load on CPUs
int8-dynamic   int8 weights, float activations computed in int8 where kernels allow
               (``Optimize.DEFAULT`` without a representative dataset); float I/O
int8           full integer: int8 kernels only, activation ranges from the calibration data;
               int8 inputs and outputs, or float32 ones where the profile's ``int8_io`` says
               so (LiteRT then quantizes inputs and dequantizes outputs inside the model)
=============  ==========================================================================

Float outputs alone would only dequantize what the int8 graph computed: a softmax over 1,000
classes in int8 has a step of 1/256, so its float output is as coarse. With float outputs the
operators in ``int8_io.float_ops`` (``SOFTMAX`` by default) therefore stay float32, fed by the
dequantized int8 logits, through TensorFlow's selective quantization
(``tf.lite.experimental.QuantizationDebugger`` with ``denylisted_ops``).

Per-output types (``int8_io.outputs: {name: int8|float}``) are made by converting with float
outputs and removing the ``DEQUANTIZE`` operator in front of each output chosen ``int8``, as
TensorFlow does for every output when asked for int8 outputs.

TensorFlow sources convert from a SavedModel of their serving function, so the artifact's
signature names its tensors as the source does. ONNX sources go through onnx2tf (the ``onnx2tf``
extra), which turns 3- to 5-D inputs channels-last (NCHW -> NHWC) and keeps the ONNX model's input
and output names; a model it cannot convert ends with exit 6 and its reason.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._libs import import_tensorflow, quiet_stdout
from ..errors import ConversionError, ProfileError, TargetUnavailableError
from ..samples import SampleSet
from ..sources import OnnxSource, TensorFlowSource
from ..tensors import inverse_permutation, permute_shape
from . import TargetRequest, TargetResult

if TYPE_CHECKING:
    from ..profiles import DeviceProfile

__all__ = ["convert"]

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def convert(request: TargetRequest) -> TargetResult:
    tf = import_tensorflow()
    profile = request.profile
    source = request.source
    tools: dict[str, str] = {}
    perms: dict[str, tuple[int, ...]] = dict(request.perms)
    if isinstance(source, OnnxSource):
        saved_model, perms, tools = _from_onnx(request)
        input_names = None
    elif isinstance(source, TensorFlowSource):
        saved_model = source.saved_model(request.work_dir, perms)
        input_names = [spec.name for spec in source.inputs]
    else:
        raise ConversionError(f"{source.filename}: no TFLite conversion from {source.format}")
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(saved_model), signature_keys=["serving_default"]
        )
    except Exception as exc:
        raise ConversionError(f"{profile.name}: TensorFlow cannot read the model: {exc}") from exc
    if profile.precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif profile.precision == "int8-dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    notes: tuple[str, ...] = ()
    if profile.precision == "int8":
        if request.calibration is None:
            raise ConversionError(f"{profile.name}: full int8 needs calibration data")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(
            request.calibration, perms, input_names, profile.calibration_samples
        )
        io = profile.int8_io
        out_types = _output_types(request)
        int8_outputs = [name for name, kind in out_types.items() if kind == "int8"]
        every_int8 = len(int8_outputs) == len(out_types)
        float_ops = () if every_int8 else tuple(io.float_ops)
        if not float_ops:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8 if io.inputs == "int8" else tf.float32
            converter.inference_output_type = tf.int8 if every_int8 else tf.float32
        flatbuffer = _run(profile, lambda: _int8(tf, converter, float_ops))
        if float_ops and io.inputs == "int8":
            util = importlib.import_module("tensorflow.lite.python.util")
            flatbuffer = _run(
                profile, lambda: util.modify_model_io_type(flatbuffer, tf.int8, tf.float32)
            )
        if int8_outputs and not every_int8:
            flatbuffer = _int8_outputs(bytes(flatbuffer), int8_outputs, request)
        notes = (f"int8 graph, {_describe_io(io.inputs, out_types, float_ops)}",)
    else:
        flatbuffer = _run(profile, converter.convert)
    request.output.write_bytes(bytes(flatbuffer))
    return TargetResult(perms=perms, tools=tools, notes=notes)


def _run(profile: DeviceProfile, step: Callable[[], Any]) -> bytes:
    """One step of TensorFlow's converter, its failures wrapped."""
    try:
        with quiet_stdout(), warnings.catch_warnings():
            # the calibrator runs TensorFlow's own interpreter, which warns that it is deprecated
            warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
            return bytes(step())
    except ConversionError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        select = [line for line in lines if line.startswith("TF Select ops:")]
        if select:  # the model needs TensorFlow kernels that LiteRT's built-in operators lack
            reason = (
                "LiteRT has no built-in operator for "
                f"{select[-1].partition(':')[2].strip()} (TensorFlow kernels, TF Select, "
                "are not part of the artifacts this converter makes)"
            )
        else:
            reason = lines[-1] if lines else type(exc).__name__
        raise ConversionError(
            f"{profile.name}: the TFLite converter failed ({profile.precision}): {reason}"
        ) from exc


def _int8(tf: Any, converter: Any, float_ops: tuple[str, ...]) -> bytes:
    """Full int8; with ``float_ops``, those operators stay float32 (fed by dequantized int8),
    through TensorFlow's quantization debugger, which quantizes selectively. Inputs and outputs
    are float32 then."""
    if not float_ops:
        return bytes(converter.convert())
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=converter.representative_dataset,
        debug_options=options,
    )
    return bytes(debugger.get_nondebug_quantized_model())


def _output_types(request: TargetRequest) -> dict[str, str]:
    """Source output name -> ``int8`` or ``float``; a name the profile gives that the source
    lacks is a profile error, found before converting."""
    io = request.profile.int8_io
    names = [spec.name for spec in request.source.outputs]
    if isinstance(io.outputs, dict):
        unknown = sorted(set(io.outputs) - set(names))
        if unknown:
            raise ProfileError(
                f"{request.profile.name}: int8_io.outputs names {', '.join(unknown)}, which the "
                f"source does not have (its outputs: {', '.join(names)})"
            )
    return {name: io.output_type(name) for name in names}


def _describe_io(inputs: str, outputs: Mapping[str, str], float_ops: tuple[str, ...]) -> str:
    kinds = set(outputs.values())
    out = (
        f"{next(iter(kinds))} outputs"
        if len(kinds) == 1
        else "outputs " + ", ".join(f"{name} {kind}" for name, kind in outputs.items())
    )
    kept = f", {', '.join(float_ops)} in float32" if float_ops else ""
    return f"{inputs} inputs, {out}{kept}"


def _int8_outputs(flatbuffer: bytes, names: list[str], request: TargetRequest) -> bytes:
    """The model with the ``DEQUANTIZE`` in front of each named output (source names) removed,
    so those outputs give int8 with their own scale and zero point."""
    util = importlib.import_module("tensorflow.lite.python.util")
    model = util._convert_model_from_bytearray_to_object(flatbuffer)
    if len(model.signatureDefs or []) != 1 or len(model.subgraphs) != 1:
        raise ConversionError(
            f"{request.profile.name}: per-output int8 types need a model with one signature"
        )
    signature = model.signatureDefs[0]
    subgraph = model.subgraphs[0]
    by_name = {
        out.name.decode() if isinstance(out.name, bytes) else str(out.name): out
        for out in signature.outputs
    }
    source_names = [spec.name for spec in request.source.outputs]
    if set(source_names) <= set(by_name):
        mapping = {name: name for name in source_names}
    else:  # a converter that renamed the outputs keeps their order
        mapping = dict(zip(source_names, by_name, strict=False))
    dequantize = set(util.get_dequantize_opcode_idx(model))
    removed: set[int] = set()
    for name in names:
        entry = by_name.get(mapping.get(name, ""))
        if entry is None:
            raise ConversionError(f"{request.profile.name}: output {name!r} is not in the model")
        op = next(
            (
                op
                for op in subgraph.operators
                if op.opcodeIndex in dequantize and op.outputs[0] == entry.tensorIndex
            ),
            None,
        )
        if op is None:
            raise ConversionError(
                f"{request.profile.name}: output {name!r} is not dequantized from int8 (an "
                "operator of int8_io.float_ops computes it in float32?); it cannot be made int8"
            )
        float_index, quant_index = int(op.outputs[0]), int(op.inputs[0])
        subgraph.outputs[list(subgraph.outputs).index(float_index)] = quant_index
        entry.tensorIndex = quant_index
        if not any(float_index in other.inputs for other in subgraph.operators):
            subgraph.operators.remove(op)  # else it still feeds an operator kept in float
            removed.add(float_index)
    if removed:
        util._remove_tensors_from_model(model, removed)
    return bytes(util._convert_model_from_object_to_bytearray(model))


def unsupported_operators(model: Any) -> list[str]:
    """The standard-domain operators of ``model`` (subgraphs included) that onnx2tf has no
    converter for: onnx2tf converts each operator with its module ``onnx2tf.ops.<OpType>``."""
    kinds: set[str] = set()

    def walk(graph: Any) -> None:
        for node in graph.node:
            if node.domain in ("", "ai.onnx"):
                kinds.add(str(node.op_type))
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    walk(attribute.g)
                for sub in attribute.graphs:
                    walk(sub)

    walk(model.graph)
    return sorted(k for k in kinds if importlib.util.find_spec(f"onnx2tf.ops.{k}") is None)


def _outputs_as_source(folder: Path, source: OnnxSource) -> Path:
    """onnx2tf gives 3- to 5-D outputs channels-last too; a SavedModel that transposes each such
    output back to the source's shape (a new folder beside ``folder``), or ``folder`` when no
    output was moved."""
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(folder))
        signature = loaded.signatures["serving_default"]
    except Exception as exc:
        raise TargetUnavailableError(
            f"{source.filename}: onnx2tf wrote a SavedModel TensorFlow cannot load: {exc}"
        ) from exc
    produced = signature.structured_outputs
    back: dict[str, tuple[int, ...]] = {}
    for spec in source.outputs:
        tensor = produced.get(spec.name)
        if tensor is None or not 3 <= len(spec.shape) <= 5:
            continue
        shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
        perm = (0, *range(2, len(spec.shape)), 1)
        if not _same_shape(shape, spec.shape) and _same_shape(
            shape, permute_shape(spec.shape, perm)
        ):
            back[spec.name] = inverse_permutation(perm)
    if not back:
        return folder
    inputs = signature.structured_input_signature[1]
    names = list(inputs)

    def serve(*args: Any) -> dict[str, Any]:
        result = signature(**dict(zip(names, args, strict=True)))
        return {k: tf.transpose(v, back[k]) if k in back else v for k, v in result.items()}

    function = tf.function(serve, input_signature=[inputs[name] for name in names])
    module = tf.Module()
    module.keep = loaded
    module.serve = function
    wrapped = folder.with_name(folder.name + "-source-outputs")
    try:
        with quiet_stdout():
            tf.saved_model.save(
                module,
                str(wrapped),
                signatures={"serving_default": function.get_concrete_function()},
            )
    except Exception as exc:
        raise ConversionError(
            f"{source.filename}: cannot put onnx2tf's outputs back in the source's layout: {exc}"
        ) from exc
    return wrapped


def _same_shape(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Equal, a variable dimension (-1) matching any."""
    return len(a) == len(b) and all(x == y or x < 0 or y < 0 for x, y in zip(a, b, strict=True))


def _representative(
    calibration: SampleSet,
    perms: Mapping[str, tuple[int, ...]],
    names: list[str] | None,
    limit: int,
) -> Any:
    """The converter's representative dataset: one sample at a time, by input name (the
    signature's), in the artifact's layout."""
    data = calibration.head(limit)
    arrays = {
        name: np.transpose(value, perms[name]) if name in perms else value
        for name, value in data.arrays.items()
    }
    order = names or list(arrays)

    def samples() -> Iterator[Any]:
        for i in range(data.count):
            if names is None:  # onnx2tf may rename inputs: feed them in order
                yield [arrays[name][i : i + 1] for name in order]
            else:
                yield {name: arrays[name][i : i + 1] for name in order}

    return samples


def _from_onnx(request: TargetRequest) -> tuple[Path, dict[str, tuple[int, ...]], dict[str, str]]:
    """ONNX -> SavedModel through onnx2tf, which moves the channel axis of 3- to 5-D inputs last
    (an input the source already has channels-last keeps its shape).

    A model onnx2tf cannot convert (an operator it has no converter for, or any failure of its
    own) raises :class:`TargetUnavailableError` (exit 6) with onnx2tf's reason."""
    source = request.source
    assert isinstance(source, OnnxSource)
    try:
        onnx2tf = importlib.import_module("onnx2tf")
    except ImportError as exc:
        raise TargetUnavailableError(
            f"a TFLite target from an ONNX source needs onnx2tf, which is not installed ({exc}); "
            "install the `onnx2tf` extra and `pip install --no-deps 'tf-keras>=2.21,<2.22'` "
            "(docs/converter.md), or convert from the Keras or SavedModel source instead"
        ) from exc
    version = str(getattr(onnx2tf, "__version__", "?"))
    if request.profile.input_layout == "NCHW":
        raise ConversionError(
            f"{request.profile.name}: onnx2tf makes NHWC inputs; an NCHW TFLite target from an "
            "ONNX source is not supported"
        )
    if request.work_dir in source.saved_models:
        return source.saved_models[request.work_dir]
    missing = unsupported_operators(source.model)
    if missing:
        raise TargetUnavailableError(
            f"{source.filename}: onnx2tf {version} cannot convert this model: it has no converter "
            f"for the operator(s) {', '.join(missing)}; replace them in the source model, or "
            "convert to an ONNX target instead"
        )
    # onnx2tf takes every 3- to 5-D input as channels-first and moves the channel axis last;
    # an input already channels-last (a 4-D image with its channels last) keeps its shape.
    channels_last = [spec.name for spec in source.inputs if spec.layout == "NHWC"]
    folder = Path(tempfile.mkdtemp(prefix="onnx2tf-", dir=request.work_dir))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            onnx2tf.convert(
                input_onnx_file_path=str(source.path),
                output_folder_path=str(folder),
                keep_nwc_or_nhwc_or_ndhwc_input_names=channels_last or None,
                non_verbose=True,
            )
    except (Exception, SystemExit) as exc:  # onnx2tf ends with sys.exit(1) on some failures
        errors = [
            line.strip()
            for line in _ANSI.sub("", printed.getvalue()).splitlines()
            if "ERROR" in line
        ]
        if not isinstance(exc, SystemExit):
            reason = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
        else:
            reason = "; ".join(errors[-3:]) or f"it exited with code {exc.code}"
        raise TargetUnavailableError(
            f"{source.filename}: onnx2tf {version} cannot convert this model: {reason}"
        ) from exc
    finally:
        if printed.getvalue().strip():
            logger.debug("onnx2tf output:\n%s", printed.getvalue().strip())
    if not (folder / "saved_model.pb").is_file():
        raise TargetUnavailableError(
            f"{source.filename}: onnx2tf {version} cannot convert this model: it wrote no "
            "SavedModel"
        )
    perms = {
        spec.name: (0, *range(2, len(spec.shape)), 1)
        for spec in source.inputs
        if 3 <= len(spec.shape) <= 5 and spec.name not in channels_last
    }
    folder = _outputs_as_source(folder, source)
    source.saved_models[request.work_dir] = (folder, perms, {"onnx2tf": version})
    return source.saved_models[request.work_dir]
