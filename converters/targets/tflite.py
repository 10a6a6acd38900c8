"""TFLite (LiteRT) artifacts through TensorFlow's converter.

=============  ==========================================================================
precision      what the converter is asked for
=============  ==========================================================================
fp32           nothing: float32 weights and kernels
fp16           float16 weights (``supported_types=[float16]``), dequantized at load on CPUs
int8-dynamic   int8 weights, float activations computed in int8 where kernels allow
               (``Optimize.DEFAULT`` without a representative dataset); float I/O
int8           full integer: int8 kernels only, int8 inputs and outputs, activation ranges
               from the calibration data
=============  ==========================================================================

TensorFlow sources convert from a SavedModel of their serving function, so the artifact's
signature names its tensors as the source does. ONNX sources go through onnx2tf when it is
installed, which turns 4-D inputs into NHWC.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._libs import import_tensorflow, quiet_stdout
from ..errors import ConversionError, TargetUnavailableError
from ..samples import SampleSet
from ..sources import OnnxSource, TensorFlowSource
from . import TargetRequest, TargetResult

__all__ = ["convert"]

logger = logging.getLogger(__name__)


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
    elif profile.precision == "int8":
        if request.calibration is None:
            raise ConversionError(f"{profile.name}: full int8 needs calibration data")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(
            request.calibration, perms, input_names, profile.calibration_samples
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        with quiet_stdout(), warnings.catch_warnings():
            # the calibrator runs TensorFlow's own interpreter, which warns that it is deprecated
            warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
            flatbuffer = converter.convert()
    except Exception as exc:
        reason = str(exc).strip().splitlines()
        raise ConversionError(
            f"{profile.name}: the TFLite converter failed ({profile.precision}): "
            f"{reason[-1] if reason else type(exc).__name__}"
        ) from exc
    request.output.write_bytes(bytes(flatbuffer))
    return TargetResult(perms=perms, tools=tools)


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
    """ONNX -> SavedModel through onnx2tf, which moves the channel axis of 3- to 5-D inputs last."""
    source = request.source
    assert isinstance(source, OnnxSource)
    try:
        onnx2tf = importlib.import_module("onnx2tf")
    except ImportError as exc:
        raise TargetUnavailableError(
            f"a TFLite target from an ONNX source needs onnx2tf, which is not installed ({exc}); "
            "`pip install onnx2tf` (with its dependencies: onnx_graphsurgeon, sng4onnx, "
            "onnxsim), or convert from the Keras or SavedModel source instead"
        ) from exc
    if request.profile.input_layout == "NCHW":
        raise ConversionError(
            f"{request.profile.name}: onnx2tf makes NHWC inputs; an NCHW TFLite target from an "
            "ONNX source is not supported"
        )
    folder = Path(tempfile.mkdtemp(prefix="onnx2tf-", dir=request.work_dir))
    try:
        with quiet_stdout():
            onnx2tf.convert(
                input_onnx_file_path=str(source.path),
                output_folder_path=str(folder),
                non_verbose=True,
            )
    except Exception as exc:
        raise ConversionError(f"{source.filename}: onnx2tf failed: {exc}") from exc
    if not (folder / "saved_model.pb").is_file():
        raise ConversionError(f"{source.filename}: onnx2tf wrote no SavedModel")
    perms = {
        spec.name: (0, *range(2, len(spec.shape)), 1)
        for spec in source.inputs
        if 3 <= len(spec.shape) <= 5
    }
    return folder, perms, {"onnx2tf": str(getattr(onnx2tf, "__version__", "?"))}
