"""Run an artifact where it was built: LiteRT for ``.tflite``, ONNX Runtime for ``.onnx``,
TensorRT (with pycuda) for ``.plan``.

Every runner speaks float to its caller, as the hub and the edge agent do: inputs of an int8
model are quantized and its outputs dequantized with the tensors' own scale and zero point. A
batch larger than the artifact takes is run in pieces.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protocols import ArtifactFormat, ManifestTensor, QuantizationParameters, datatype_of

from ._libs import import_onnxruntime
from .errors import ArtifactError, ConversionError, TargetUnavailableError

__all__ = ["ArtifactRunner", "open_runner"]

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray[Any, Any]]

_INTERPRETERS = (
    ("ai_edge_litert.interpreter", "ai_edge_litert"),
    ("tflite_runtime.interpreter", "tflite_runtime"),
    ("tensorflow.lite", "tensorflow"),
)


class ArtifactRunner(Protocol):
    runtime: str
    """What runs it: ``ai_edge_litert``, ``onnxruntime:CPUExecutionProvider``, ``tensorrt``."""
    inputs: list[ManifestTensor]
    outputs: list[ManifestTensor]

    def run(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Arrays:
        """Float (or the model's own) arrays by input name in, float outputs by name out."""
        ...

    def close(self) -> None: ...


def open_runner(path: Path, format_name: ArtifactFormat, *, threads: int = 1) -> ArtifactRunner:
    if format_name == "tflite":
        return LiteRTRunner(path, threads=threads)
    if format_name == "onnx":
        return OnnxRuntimeRunner(path, threads=threads)
    if format_name == "tensorrt":
        return TensorRTRunner(path)
    raise ArtifactError(f"no runner for format {format_name!r}")


def _quantize(value: np.ndarray[Any, Any], dtype: Any, scale: float, zero: int) -> Any:
    info = np.iinfo(dtype)
    scaled = np.round(value.astype(np.float32) / np.float32(scale)) + zero
    return np.clip(scaled, info.min, info.max).astype(dtype)


def _widen(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """float16 outputs compared as float32."""
    return array.astype(np.float32) if array.dtype == np.float16 else array


class LiteRTRunner:
    def __init__(self, path: Path, *, threads: int) -> None:
        interpreter_class, self.runtime = self._interpreter_class()
        try:
            self._interpreter = interpreter_class(model_path=str(path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except Exception as exc:
            raise ArtifactError(f"{path.name}: LiteRT cannot load it: {exc}") from exc
        self._names = self._signature_names()
        self._input_details = self._interpreter.get_input_details()
        self._output_details = self._interpreter.get_output_details()
        self.inputs = [self._tensor(d) for d in self._input_details]
        self.outputs = [self._tensor(d) for d in self._output_details]
        self._shapes = {
            int(d["index"]): tuple(int(x) for x in d["shape"]) for d in self._input_details
        }

    @staticmethod
    def _interpreter_class() -> tuple[Any, str]:
        for module_name, label in _INTERPRETERS:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            return module.Interpreter, label
        raise TargetUnavailableError(
            "no LiteRT interpreter is installed to validate a .tflite artifact; "
            "install ai-edge-litert (hybrid-inference[edge])"
        )

    def _signature_names(self) -> dict[int, str]:
        try:
            signatures = self._interpreter.get_signature_list()
            if len(signatures) != 1:
                return {}
            runner = self._interpreter.get_signature_runner(next(iter(signatures)))
            names = {
                int(details["index"]): name
                for part in (runner.get_input_details(), runner.get_output_details())
                for name, details in part.items()
            }
            del runner  # it holds a reference that blocks resize_tensor_input
            return names
        except Exception:  # older runtimes: keep the raw tensor names
            return {}

    def _name(self, detail: Mapping[str, Any]) -> str:
        return self._names.get(int(detail["index"]), str(detail["name"]))

    def _tensor(self, detail: Mapping[str, Any]) -> ManifestTensor:
        shape = detail.get("shape_signature")
        if shape is None or len(shape) != len(detail["shape"]):
            shape = detail["shape"]
        params = detail.get("quantization_parameters") or {}
        scales = [float(s) for s in params.get("scales", [])]
        quantization = None
        if scales:
            quantization = QuantizationParameters(
                scale=scales,
                zero_point=[int(z) for z in params.get("zero_points", [])],
                axis=int(params.get("quantized_dimension", 0)) if len(scales) > 1 else None,
            )
        return ManifestTensor(
            name=self._name(detail),
            datatype=datatype_of(np.dtype(detail["dtype"])),
            shape=[int(d) for d in shape],
            quantization=quantization,
        )

    def run(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Arrays:
        count = len(next(iter(inputs.values())))
        try:
            return self._invoke(inputs, count)
        except (ValueError, RuntimeError) as exc:
            if count == 1:
                raise ConversionError(f"LiteRT failed to run the artifact: {exc}") from exc
            logger.debug("batch of %d failed (%s); running one sample at a time", count, exc)
        parts = [
            self._invoke({k: v[i : i + 1] for k, v in inputs.items()}, 1) for i in range(count)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _invoke(self, inputs: Mapping[str, np.ndarray[Any, Any]], count: int) -> Arrays:
        interpreter = self._interpreter
        resized = False
        for detail in self._input_details:
            value = inputs[self._name(detail)]
            if self._shapes.get(int(detail["index"])) != value.shape:
                interpreter.resize_tensor_input(detail["index"], list(value.shape))
                self._shapes[int(detail["index"])] = value.shape
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for detail in self._input_details:
            value = inputs[self._name(detail)]
            dtype = np.dtype(detail["dtype"])
            scale, zero = detail["quantization"]
            if (
                np.issubdtype(dtype, np.integer)
                and scale
                and np.issubdtype(value.dtype, np.floating)
            ):
                value = _quantize(value, dtype, scale, zero)
            interpreter.set_tensor(detail["index"], np.ascontiguousarray(value, dtype=dtype))
        try:
            interpreter.invoke()
        except Exception as exc:
            raise RuntimeError(str(exc)) from exc
        outputs: Arrays = {}
        for detail in interpreter.get_output_details():
            result = interpreter.get_tensor(detail["index"])
            scale, zero = detail["quantization"]
            if np.issubdtype(result.dtype, np.integer) and scale:
                result = (result.astype(np.float32) - zero) * np.float32(scale)
            outputs[self._name(detail)] = np.array(result)
        return outputs

    def close(self) -> None:
        self._interpreter = None


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


class OnnxRuntimeRunner:
    def __init__(self, path: Path, *, threads: int) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ArtifactError(f"{path.name}: ONNX Runtime cannot load it: {exc}") from exc
        self.runtime = f"onnxruntime:{self._session.get_providers()[0]}"
        self._types = {a.name: _ORT_TYPES.get(a.type) for a in self._session.get_inputs()}
        self.inputs = [self._tensor(a) for a in self._session.get_inputs()]
        self.outputs = [self._tensor(a) for a in self._session.get_outputs()]

    @staticmethod
    def _tensor(arg: Any) -> ManifestTensor:
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None:
            raise ArtifactError(f"tensor {arg.name!r} has type {arg.type}, which is not served")
        shape = [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape]
        return ManifestTensor(name=arg.name, datatype=datatype_of(np.dtype(dtype)), shape=shape)

    def run(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Arrays:
        feed = {
            name: np.ascontiguousarray(inputs[name], dtype=t) for name, t in self._types.items()
        }
        names = [o.name for o in self._session.get_outputs()]
        try:
            results = self._session.run(names, feed)
        except Exception as exc:
            raise ConversionError(f"ONNX Runtime failed to run the artifact: {exc}") from exc
        return {name: _widen(np.asarray(r)) for name, r in zip(names, results, strict=True)}

    def close(self) -> None:
        self._session = None


class TensorRTRunner:
    """A plan on GPU 0 through the TensorRT 10 named-tensor API; buffers per call."""

    def __init__(self, path: Path) -> None:
        from .targets.tensorrt import _import_pycuda, import_tensorrt, make_logger

        trt = import_tensorrt()
        cuda = _import_pycuda()
        self._trt, self._cuda = trt, cuda
        cuda.init()
        self._context_handle = cuda.Device(0).retain_primary_context()
        self._context_handle.push()
        try:
            self._logger = make_logger(trt)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise ArtifactError(
                    f"{path.name}: TensorRT cannot deserialize it ({self._logger.last_error})"
                )
            self._context = self._engine.create_execution_context()
        finally:
            self._context_handle.pop()
        self.runtime = f"tensorrt:{trt.__version__}"
        self.inputs: list[ManifestTensor] = []
        self.outputs: list[ManifestTensor] = []
        self._max_batch = 1 << 30
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = [int(d) for d in self._engine.get_tensor_shape(name)]
            tensor = ManifestTensor(name=name, datatype=datatype_of(dtype), shape=shape)
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(tensor)
                if shape and shape[0] < 0:
                    high = self._engine.get_tensor_profile_shape(name, 0)[2]
                    self._max_batch = min(self._max_batch, int(high[0]))
            else:
                self.outputs.append(tensor)

    def run(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Arrays:
        count = len(next(iter(inputs.values())))
        step = max(1, min(count, self._max_batch))
        parts = [
            self._run_once({k: v[i : i + step] for k, v in inputs.items()})
            for i in range(0, count, step)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _run_once(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Arrays:
        trt, cuda, engine, context = self._trt, self._cuda, self._engine, self._context
        self._context_handle.push()
        allocations = []
        try:
            stream = cuda.Stream()
            for tensor in self.inputs:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tensor.name)))
                value = np.ascontiguousarray(inputs[tensor.name], dtype=dtype)
                context.set_input_shape(tensor.name, value.shape)
                buffer = cuda.mem_alloc(max(1, value.nbytes))
                allocations.append(buffer)
                cuda.memcpy_htod_async(buffer, value, stream)
                context.set_tensor_address(tensor.name, int(buffer))
            hosts = {}
            for tensor in self.outputs:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tensor.name)))
                shape = tuple(int(d) for d in context.get_tensor_shape(tensor.name))
                host = cuda.pagelocked_empty(shape, dtype)
                buffer = cuda.mem_alloc(max(1, host.nbytes))
                allocations.append(buffer)
                context.set_tensor_address(tensor.name, int(buffer))
                hosts[tensor.name] = (host, buffer)
            if not context.execute_async_v3(stream.handle):
                raise ConversionError(f"TensorRT failed to run the plan: {self._logger.last_error}")
            for host, buffer in hosts.values():
                cuda.memcpy_dtoh_async(host, buffer, stream)
            stream.synchronize()
            return {name: _widen(np.array(host)) for name, (host, _) in hosts.items()}
        finally:
            for buffer in allocations:
                buffer.free()
            self._context_handle.pop()

    def close(self) -> None:
        self._context = None
        self._engine = None
