"""ONNX Runtime: CPU by default; CUDA and TensorRT execution providers when onnxruntime-gpu and
a GPU are there. The session is thread-safe, so batches may run concurrently."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from protocols import Datatype, artifact_file

from ..errors import BackendUnavailableError, BadRequestError, InferenceError, ModelLoadError
from .base import Backend, BackendOptions, TensorSpec

logger = logging.getLogger(__name__)

_ONNX_TYPES: dict[str, Datatype] = {
    "tensor(bool)": Datatype.BOOL,
    "tensor(uint8)": Datatype.UINT8,
    "tensor(uint16)": Datatype.UINT16,
    "tensor(uint32)": Datatype.UINT32,
    "tensor(uint64)": Datatype.UINT64,
    "tensor(int8)": Datatype.INT8,
    "tensor(int16)": Datatype.INT16,
    "tensor(int32)": Datatype.INT32,
    "tensor(int64)": Datatype.INT64,
    "tensor(float16)": Datatype.FP16,
    "tensor(float)": Datatype.FP32,
    "tensor(double)": Datatype.FP64,
    "tensor(string)": Datatype.BYTES,
}

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _spec(arg: Any) -> TensorSpec:
    datatype = _ONNX_TYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which the hub cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def choose_providers(available: list[str], options: BackendOptions) -> list[str]:
    """Execution providers in order of preference for ``options.device``."""
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if not options.parameters.get("tensorrt_provider", False):
        gpu = [p for p in gpu if p != "TensorrtExecutionProvider"]
    if options.device == "gpu" and not gpu:
        raise BackendUnavailableError(
            "device is 'gpu' but ONNX Runtime offers no GPU execution provider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu on a machine with CUDA"
        )
    if options.device == "cpu":
        gpu = []
    return [*gpu, "CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    def __init__(self, session: Any) -> None:
        super().__init__(
            name=f"onnxruntime:{session.get_providers()[0]}",
            inputs=[_spec(a) for a in session.get_inputs()],
            outputs=[_spec(a) for a in session.get_outputs()],
        )
        self._session = session
        self._output_names = [o.name for o in self._outputs]
        self._bytes_inputs = {s.name for s in self._inputs if s.datatype is Datatype.BYTES}
        self._bytes_outputs = {s.name for s in self._outputs if s.datatype is Datatype.BYTES}

    @classmethod
    def model_file(cls) -> str:
        return artifact_file("onnx")

    @classmethod
    def load(cls, path: Path, options: BackendOptions) -> Backend:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                "onnxruntime is not installed; install hybrid-inference[hub]"
            ) from exc
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not options.parameters.get("allow_spinning", False):
            # ONNX Runtime's idle threads spin by default, taking the CPU the hub's event loop
            # needs: on a 2-core host that halved MobileNetV2's throughput and multiplied its p99
            # by ten (benchmarks/RESULTS.md). ``allow_spinning: true`` restores it.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers = choose_providers(ort.get_available_providers(), options)
        try:
            session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped pybind errors
            raise ModelLoadError(f"{path.name}: ONNX Runtime cannot load it: {exc}") from exc
        backend = cls(session)
        logger.info("loaded %s with providers %s", path, session.get_providers())
        return backend

    def infer(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        feed = {
            name: _to_onnx(name, value) if name in self._bytes_inputs else value
            for name, value in inputs.items()
        }
        try:
            results = self._session.run(self._output_names, feed)
        except Exception as exc:  # an invalid value the checks could not see, or a runtime fault
            raise InferenceError(f"ONNX Runtime failed: {exc}") from exc
        out = dict(zip(self._output_names, results, strict=True))
        for name in self._bytes_outputs:
            out[name] = _from_onnx(out[name])
        return out

    def close(self) -> None:
        self._session = None


def _to_onnx(name: str, value: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """ONNX string tensors hold text; the wire's BYTES hold bytes."""
    out = np.empty(value.shape, dtype=object)
    try:
        for index, element in np.ndenumerate(value):
            out[index] = element.decode("utf-8") if isinstance(element, bytes) else str(element)
    except UnicodeDecodeError:
        raise BadRequestError(
            f"input {name!r}: this model's string tensors take UTF-8 text"
        ) from None
    return out


def _from_onnx(value: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out = np.empty(value.shape, dtype=object)
    for index, element in np.ndenumerate(value):
        out[index] = element.encode("utf-8") if isinstance(element, str) else bytes(element)
    return out
