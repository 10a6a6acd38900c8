"""TensorRT plans through the TensorRT 10 builder API, from the source's float32 ONNX model.

The network is parsed with ``trt.OnnxParser`` into an explicit-batch network
(``create_network(0)``), a variable batch dimension gets one optimization profile from the
device profile's ``batch`` range, ``fp16`` sets ``BuilderFlag.FP16``, and ``int8`` sets
``INT8`` (with ``FP16`` for the layers int8 cannot take) and calibrates with an entropy
calibrator fed through pycuda. A plan runs only on the TensorRT version and GPU family that
built it, so build on the device, or one of its kind.

TensorRT and pycuda are imported when a plan is built; without them the build fails with a
:class:`~converters.errors.TargetUnavailableError` naming ``hybrid-inference[gpu]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConversionError, TargetUnavailableError
from ..samples import SampleSet
from . import TargetRequest, TargetResult
from .onnx import onnx_model

if TYPE_CHECKING:
    from ..profiles import DeviceProfile

__all__ = ["calibration_batch", "convert", "import_tensorrt", "make_logger"]

logger = logging.getLogger(__name__)

GPU_HINT = "install hybrid-inference[gpu] (TensorRT 10 and pycuda) on a machine with an NVIDIA GPU"

_LEVELS = {
    "INTERNAL_ERROR": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.DEBUG,
    "VERBOSE": logging.DEBUG,
}


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise TargetUnavailableError(f"TensorRT is not available ({exc}); {GPU_HINT}") from exc
    version = str(getattr(trt, "__version__", "0"))
    if int(version.split(".")[0] or 0) < 10:
        raise TargetUnavailableError(f"TensorRT {version} is installed; plans need TensorRT 10+")
    return trt


def _import_pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except (ImportError, OSError) as exc:
        raise TargetUnavailableError(f"pycuda is not available ({exc}); {GPU_HINT}") from exc
    return cuda


def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards to :mod:`logging` and keeps the last error."""

    class _Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error: str | None = None

        def log(self, severity: Any, msg: str) -> None:
            level = _LEVELS.get(getattr(severity, "name", str(severity)), logging.DEBUG)
            if level >= logging.ERROR:
                self.last_error = msg
            logger.log(level, "TensorRT: %s", msg)

    return _Logger()


def convert(request: TargetRequest) -> TargetResult:
    trt = import_tensorrt()
    profile = request.profile
    if profile.precision not in ("fp32", "fp16", "int8"):
        raise ConversionError(f"{profile.name}: TensorRT has no {profile.precision} target here")
    model, tools = onnx_model(request.source, request.perms, opset=profile.opset)
    trt_logger = make_logger(trt)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"{profile.name}: TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_bytes)
    shapes = builder.create_optimization_profile()
    input_names = []
    input_dims = []
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        input_names.append(tensor.name)
        dims = tuple(int(d) for d in tensor.shape)
        input_dims.append(dims)
        if any(d < 0 for d in dims[1:]):
            raise ConversionError(
                f"{profile.name}: input {tensor.name!r} has variable dimensions {list(dims)} "
                "besides the batch; TensorRT plans here take a variable batch only"
            )
        if dims and dims[0] < 0:
            rest = dims[1:]
            batch = profile.batch
            shapes.set_shape(
                tensor.name, (batch.min, *rest), (batch.opt, *rest), (batch.max, *rest)
            )
        else:
            shapes.set_shape(tensor.name, dims, dims, dims)
    config.add_optimization_profile(shapes)
    if profile.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    cuda_context = None
    calibrator = None
    try:
        if profile.precision == "int8":
            if request.calibration is None:
                raise ConversionError(f"{profile.name}: int8 needs calibration data")
            cuda = _import_pycuda()
            cuda.init()
            cuda_context = cuda.Device(0).retain_primary_context()
            cuda_context.push()
            calibrator = _calibrator(
                trt,
                cuda,
                request.calibration.head(profile.calibration_samples),
                request.perms,
                calibration_batch(profile, input_dims),
            )
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = calibrator
            config.set_calibration_profile(shapes)
        plan = builder.build_serialized_network(network, config)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"{profile.name}: the TensorRT build failed: {exc}") from exc
    finally:
        if calibrator is not None:
            calibrator.free()
        if cuda_context is not None:
            cuda_context.pop()
    if plan is None:
        raise ConversionError(
            f"{profile.name}: the TensorRT build failed: {trt_logger.last_error or 'no reason given'}"
        )
    request.output.write_bytes(bytes(plan))
    return TargetResult(perms=dict(request.perms), tools={**tools, "tensorrt": trt.__version__})


def calibration_batch(profile: DeviceProfile, input_dims: Sequence[tuple[int, ...]]) -> int:
    """The batch the int8 calibrator feeds: the optimization profile's ``opt`` batch, the shape
    ``set_calibration_profile`` calibrates at, for a variable batch; the model's own batch when
    it is fixed."""
    if any(dims and dims[0] < 0 for dims in input_dims):
        return profile.batch.opt
    fixed = {dims[0] for dims in input_dims if dims}
    if len(fixed) > 1:
        raise ConversionError(f"{profile.name}: the inputs have different batch sizes {fixed}")
    return max(1, fixed.pop()) if fixed else profile.batch.opt


def _calibrator(
    trt: Any,
    cuda: Any,
    data: SampleSet,
    perms: Mapping[str, tuple[int, ...]],
    batch_size: int,
) -> Any:
    arrays = {
        name: np.ascontiguousarray(np.transpose(v, perms[name]) if name in perms else v)
        for name, v in data.arrays.items()
    }

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.position = 0
            self.buffers = {
                name: cuda.mem_alloc(max(1, array[:batch_size].nbytes))
                for name, array in arrays.items()
            }

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.position + batch_size > data.count:
                return None
            pointers = []
            for name in names:
                chunk = np.ascontiguousarray(
                    arrays[name][self.position : self.position + batch_size]
                )
                cuda.memcpy_htod(self.buffers[name], chunk)
                pointers.append(int(self.buffers[name]))
            self.position += batch_size
            return pointers

        def read_calibration_cache(self) -> None:
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            return None

        def free(self) -> None:
            for buffer in self.buffers.values():
                buffer.free()
            self.buffers = {}

    if data.count < batch_size:
        raise ConversionError(
            f"int8 calibration needs at least {batch_size} samples; it has {data.count}"
        )
    return _EntropyCalibrator()
