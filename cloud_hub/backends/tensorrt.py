"""TensorRT: serialized engines (``model.plan``) on an NVIDIA GPU.

Written against the TensorRT 10 Python API, whose inference calls TensorRT 11 keeps (11 drops
weak typing and calibration, which concern building, not running, a plan): named I/O tensors
(``num_io_tensors``, ``get_tensor_name``/``_mode``/``_dtype``/``_shape``), optimization profiles
(``get_tensor_profile_shape``, ``set_optimization_profile_async``, ``set_input_shape``), and
``set_tensor_address`` with ``execute_async_v3`` on a CUDA stream. The binding-index API and
``execute_async_v2`` are not used; TensorRT 10 removed them. Device memory and streams come from
pycuda (:mod:`._cuda`) in the GPU's primary context, the one TensorRT uses too.

An execution context is not thread-safe, so each instance (``instance_count``) has its own, with
its own stream and buffers, in a pool. Contexts of an engine with dynamic shapes that run at the
same time must use different optimization profiles: instances take profiles with the same
ranges where the plan has several, and otherwise their own copy of the engine (its weights again
in GPU memory). ``parameters`` in config.yaml: ``device_id`` (GPU, default 0) and
``optimization_profile`` (the profile whose ranges are served, default 0). A plan runs only on
the TensorRT version and GPU family that built it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocols import Datatype, artifact_file

from ..errors import (
    BackendUnavailableError,
    BadRequestError,
    ConfigError,
    HubError,
    InferenceError,
    ModelLoadError,
)
from ._cuda import CudaDevice, StreamBuffers
from .base import Backend, BackendOptions, ShapeRange, TensorSpec

__all__ = [
    "TRT_DATATYPES",
    "ShapeRange",
    "TensorRTBackend",
    "assign_profiles",
    "check_input_shape",
    "datatype_of_trt",
]

logger = logging.getLogger(__name__)

TRT_DATATYPES: dict[str, Datatype] = {
    "FLOAT": Datatype.FP32,
    "HALF": Datatype.FP16,
    "BF16": Datatype.BF16,
    "INT8": Datatype.INT8,
    "INT32": Datatype.INT32,
    "INT64": Datatype.INT64,
    "BOOL": Datatype.BOOL,
    "UINT8": Datatype.UINT8,
}
"""``tensorrt.DataType`` member name -> wire datatype; FP8, INT4, FP4 and the like are refused."""

_LOG_LEVELS = {
    "INTERNAL_ERROR": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.DEBUG,
    "VERBOSE": logging.DEBUG,
}


def _enum_name(value: object) -> str:
    """``FLOAT`` for ``tensorrt.DataType.FLOAT`` (pybind11 enums have ``name``)."""
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else str(value).rpartition(".")[2]


def datatype_of_trt(tensor: str, trt_dtype: object) -> Datatype:
    """The wire datatype of a TensorRT tensor type; :class:`ModelLoadError` for one it lacks."""
    name = _enum_name(trt_dtype)
    datatype = TRT_DATATYPES.get(name)
    if datatype is None:
        raise ModelLoadError(
            f"tensor {tensor!r} has TensorRT type {name}, which the hub cannot serve "
            f"(it serves {', '.join(TRT_DATATYPES)})"
        )
    return datatype


def check_input_shape(name: str, shape: tuple[int, ...], allowed: ShapeRange) -> None:
    """:class:`BadRequestError` unless ``shape`` lies within ``allowed``."""
    if len(shape) != len(allowed.min):
        raise BadRequestError(
            f"input {name!r} has shape {list(shape)}; the model takes "
            f"{len(allowed.min)} dimensions, not {len(shape)}"
        )
    for axis, (dim, low, high) in enumerate(zip(shape, allowed.min, allowed.max, strict=True)):
        if not low <= dim <= high:
            must = f"be {low}" if low == high else f"lie between {low} and {high}"
            raise BadRequestError(
                f"input {name!r} has shape {list(shape)}, outside the shapes this TensorRT plan "
                f"was built for (from {list(allowed.min)} to {list(allowed.max)}): "
                f"dimension {axis} is {dim} and must {must}"
            )


def assign_profiles(
    instance_count: int,
    profile: int,
    ranges: Sequence[Mapping[str, ShapeRange]],
    *,
    dynamic: bool,
) -> list[tuple[int, int]]:
    """``(engine copy, optimization profile)`` for each instance.

    Static engines share one engine and profile. With dynamic shapes, instances use distinct
    profiles whose ranges equal ``ranges[profile]`` (the served one first), and a further copy
    of the engine once those run out, so no two contexts of one engine share a profile.
    """
    if instance_count < 1:
        raise ConfigError(f"instance_count must be at least 1, not {instance_count}")
    if not 0 <= profile < len(ranges):
        raise ConfigError(
            f"optimization_profile {profile} does not exist: the plan has {len(ranges)} "
            f"(0 to {len(ranges) - 1})"
        )
    if not dynamic:
        return [(0, profile)] * instance_count
    served = {name: r.bounds for name, r in ranges[profile].items()}
    twins = [profile] + [
        index
        for index, other in enumerate(ranges)
        if index != profile and {name: r.bounds for name, r in other.items()} == served
    ]
    return [(i // len(twins), twins[i % len(twins)]) for i in range(instance_count)]


def _int_parameter(options: BackendOptions, key: str, default: int) -> int:
    value = options.parameters.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"parameters.{key} must be a whole number >= 0, not {value!r}")
    return value


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise BackendUnavailableError(
            "TensorRT is not installed: install hybrid-inference[gpu] on a machine with an NVIDIA GPU"
            + ("" if isinstance(exc, ModuleNotFoundError) else f" ({exc})")
        ) from exc
    return tensorrt


def _make_logger(trt: Any) -> Any:
    """A ``tensorrt.ILogger`` that forwards to :mod:`logging` and remembers the last error."""

    class _Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error: str | None = None

        def log(self, severity: Any, msg: str) -> None:
            level = _LOG_LEVELS.get(_enum_name(severity), logging.DEBUG)
            if level >= logging.ERROR:
                self.last_error = msg
            logger.log(level, "TensorRT: %s", msg)

    return _Logger()


def _dims(dims: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


@dataclass
class _Instance:
    context: Any
    """A ``tensorrt.IExecutionContext``."""
    buffers: StreamBuffers


@dataclass(frozen=True, kw_only=True)
class _EngineIO:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ranges: list[dict[str, ShapeRange]]
    """Per optimization profile, per input."""
    dynamic: bool


def _describe(trt: Any, engine: Any, path: Path) -> _EngineIO:
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        datatype = datatype_of_trt(name, engine.get_tensor_dtype(name))
        if engine.is_shape_inference_io(name):
            raise ModelLoadError(
                f"{path.name}: tensor {name!r} is a shape tensor, which this backend does not serve"
            )
        layout = engine.get_tensor_format(name)
        if layout != trt.TensorFormat.LINEAR:
            raise ModelLoadError(
                f"{path.name}: tensor {name!r} has layout {_enum_name(layout)}; "
                "this backend serves LINEAR (row-major) I/O only"
            )
        spec = TensorSpec(name=name, datatype=datatype, shape=_dims(engine.get_tensor_shape(name)))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(spec)
        else:
            outputs.append(spec)
    dynamic = any(d < 0 for spec in inputs for d in spec.shape)
    ranges: list[dict[str, ShapeRange]] = []
    for profile in range(max(1, engine.num_optimization_profiles)):
        ranges.append({})
        for spec in inputs:
            if any(d < 0 for d in spec.shape):
                low, opt, high = engine.get_tensor_profile_shape(spec.name, profile)
                allowed = ShapeRange(min=_dims(low), opt=_dims(opt), max=_dims(high))
            else:
                allowed = ShapeRange.fixed(spec.shape)
            ranges[-1][spec.name] = allowed
    return _EngineIO(inputs=inputs, outputs=outputs, ranges=ranges, dynamic=dynamic)


class TensorRTBackend(Backend):
    def __init__(
        self,
        *,
        device: CudaDevice,
        trt_logger: Any,
        runtime: Any,
        engines: list[Any],
        instances: list[_Instance],
        io: _EngineIO,
        profile: int,
    ) -> None:
        super().__init__(name=f"tensorrt:{device.name}", inputs=io.inputs, outputs=io.outputs)
        self._device: CudaDevice | None = device
        self._trt_logger = trt_logger
        self._runtime = runtime
        self._engines = engines
        self._instances = instances
        self._pool: queue.Queue[_Instance] = queue.Queue()
        for instance in instances:
            self._pool.put(instance)
        self.shape_ranges = io.ranges[profile]
        """The shapes each input takes, from the served optimization profile."""

    @classmethod
    def model_file(cls) -> str:
        return artifact_file("tensorrt")

    @classmethod
    def load(cls, path: Path, options: BackendOptions) -> Backend:
        if options.device == "cpu":
            raise BackendUnavailableError(
                "TensorRT runs only on an NVIDIA GPU, and this model's device is 'cpu'"
            )
        device_id = _int_parameter(options, "device_id", 0)
        profile = _int_parameter(options, "optimization_profile", 0)
        trt = _import_tensorrt()
        try:
            plan = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{path.name}: cannot read it: {exc}") from exc
        device = CudaDevice.open(device_id)
        with device.activate():
            backend = cls._build(trt, device, plan, path, options, profile)
        logger.info("loaded %s on %s (%d instances)", path, device.name, options.instance_count)
        return backend

    @classmethod
    def _build(
        cls,
        trt: Any,
        device: CudaDevice,
        plan: bytes,
        path: Path,
        options: BackendOptions,
        profile: int,
    ) -> TensorRTBackend:
        trt_logger = _make_logger(trt)
        runtime = trt.Runtime(trt_logger)

        def deserialize() -> Any:
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                reason = trt_logger.last_error or "no reason given"
                raise ModelLoadError(
                    f"{path.name}: TensorRT {getattr(trt, '__version__', '?')} cannot deserialize "
                    f"it ({reason}); "
                    "a plan runs only on the TensorRT version and GPU family that built it"
                )
            return engine

        engines = [deserialize()]
        instances: list[_Instance] = []
        try:
            io = _describe(trt, engines[0], path)
            placement = assign_profiles(
                options.instance_count, profile, io.ranges, dynamic=io.dynamic
            )
            while len(engines) <= max(copy for copy, _ in placement):
                engines.append(deserialize())
            for copy, instance_profile in placement:
                context = engines[copy].create_execution_context()
                if context is None:
                    raise ModelLoadError(
                        f"{path.name}: TensorRT cannot create an execution context "
                        f"({trt_logger.last_error or 'out of GPU memory?'})"
                    )
                buffers = StreamBuffers(device)
                instances.append(_Instance(context=context, buffers=buffers))
                if io.dynamic and not context.set_optimization_profile_async(
                    instance_profile, buffers.stream_handle
                ):
                    raise ModelLoadError(
                        f"{path.name}: TensorRT cannot select optimization profile "
                        f"{instance_profile} ({trt_logger.last_error or 'no reason given'})"
                    )
                buffers.discard()
        except BaseException as exc:
            # Free GPU memory now, while the context is current, not whenever GC runs.
            for instance in instances:
                with contextlib.suppress(Exception):
                    instance.buffers.close()
            instances.clear()
            engines.clear()
            if isinstance(exc, device.driver.Error):
                raise ModelLoadError(f"{path.name}: CUDA failed while loading it: {exc}") from exc
            raise
        return cls(
            device=device,
            trt_logger=trt_logger,
            runtime=runtime,
            engines=engines,
            instances=instances,
            io=io,
            profile=profile,
        )

    def infer(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        arrays = self._checked(inputs)
        device = self._device
        if device is None:
            raise InferenceError("the TensorRT backend is closed")
        instance = self._pool.get()
        try:
            with device.activate():
                try:
                    return self._run(instance, arrays)
                except BaseException:
                    with contextlib.suppress(Exception):
                        instance.buffers.discard()
                    raise
        except HubError:
            raise
        except Exception as exc:  # pycuda and TensorRT raise their own untyped errors
            raise InferenceError(f"TensorRT failed: {exc}") from exc
        finally:
            self._pool.put(instance)

    def _checked(
        self, inputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Contiguous arrays in the engine's input order; :class:`BadRequestError` for misfits."""
        unknown = sorted(set(inputs) - {spec.name for spec in self._inputs})
        if unknown:
            raise BadRequestError(f"unknown input(s) {', '.join(map(repr, unknown))}")
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for spec in self._inputs:
            if spec.name not in inputs:
                raise BadRequestError(f"input {spec.name!r} is missing")
            value = np.ascontiguousarray(inputs[spec.name])
            expected = spec.datatype.numpy_dtype
            if value.dtype != expected:
                raise BadRequestError(
                    f"input {spec.name!r} holds {value.dtype}; the model takes {spec.datatype.value}"
                )
            check_input_shape(spec.name, tuple(value.shape), self.shape_ranges[spec.name])
            arrays[spec.name] = value
        return arrays

    def _run(
        self, instance: _Instance, arrays: Mapping[str, np.ndarray[Any, Any]]
    ) -> dict[str, np.ndarray[Any, Any]]:
        context, buffers = instance.context, instance.buffers
        for name, value in arrays.items():
            if not context.set_input_shape(name, value.shape):
                raise BadRequestError(
                    f"TensorRT refused shape {list(value.shape)} for input {name!r}: "
                    f"{self._trt_logger.last_error or 'no reason given'}"
                )
            context.set_tensor_address(name, buffers.upload(name, value))
        shapes: dict[str, tuple[int, ...]] = {}
        for spec in self._outputs:
            shape = _dims(context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise InferenceError(
                    f"output {spec.name!r} has a data-dependent shape {list(shape)}, "
                    "which this backend does not serve"
                )
            nbytes = int(np.prod(shape, dtype=np.int64)) * spec.datatype.numpy_dtype.itemsize
            context.set_tensor_address(spec.name, buffers.reserve(spec.name, nbytes))
            shapes[spec.name] = shape
        if not context.execute_async_v3(buffers.stream_handle):
            raise InferenceError(
                "TensorRT could not run the batch: "
                f"{self._trt_logger.last_error or 'no reason given'}"
            )
        for spec in self._outputs:
            buffers.download(spec.name, shapes[spec.name], spec.datatype.numpy_dtype)
        return buffers.finish()

    def close(self) -> None:
        """Free the GPU memory; batches still running must have finished."""
        device, self._device = self._device, None
        if device is None:
            return
        with device.activate():
            for instance in self._instances:
                instance.buffers.close()
                instance.context = None
            self._instances.clear()
            while not self._pool.empty():
                self._pool.get_nowait()
            self._engines.clear()
            self._runtime = None
