"""LiteRT on CPU, so the hub can serve the same ``.tflite`` artifacts the devices run.

An interpreter is not thread-safe: the backend keeps one per instance in a pool. Like the edge
agent, it speaks float to callers of int8 models, quantizing inputs and dequantizing outputs with
the tensors' own scale and zero point.
"""

from __future__ import annotations

import importlib
import queue
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from protocols import Datatype, artifact_file, datatype_of

from ..errors import BackendUnavailableError, InferenceError, ModelLoadError
from .base import Backend, BackendOptions, TensorSpec

RUNTIMES = (
    ("ai_edge_litert.interpreter", "ai_edge_litert"),
    ("tflite_runtime.interpreter", "tflite_runtime"),
    ("tensorflow.lite", "tensorflow"),
)


def _interpreter_class() -> tuple[Any, str]:
    for module_name, label in RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return module.Interpreter, label
    raise BackendUnavailableError(
        "no LiteRT interpreter is installed; install ai-edge-litert (hybrid-inference[edge])"
    )


def _quantization(detail: Mapping[str, Any]) -> tuple[float, int] | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if detail["dtype"] in (np.int8, np.uint8, np.int16) and scale:
        return float(scale), int(zero_point)
    return None


def _signature_names(interpreter: Any) -> dict[int, str]:
    """Tensor index -> signature name (``pixels``, ``output_0``) when the model has exactly one
    signature, as Keras-converted models do; the edge agent names tensors the same way."""
    try:
        signatures = interpreter.get_signature_list()
        if len(signatures) != 1:
            return {}
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        names = {
            int(details["index"]): name
            for part in (runner.get_input_details(), runner.get_output_details())
            for name, details in part.items()
        }
        del runner  # it holds a reference that blocks resize_tensor_input
        return names
    except Exception:  # runtimes without signature details: keep the tensor names
        return {}


class TFLiteBackend(Backend):
    def __init__(self, interpreters: list[Any], runtime: str) -> None:
        self._pool: queue.Queue[Any] = queue.Queue()
        for interpreter in interpreters:
            self._pool.put(interpreter)
        first = interpreters[0]
        self._names = _signature_names(first)
        super().__init__(
            name=f"tflite:{runtime}",
            inputs=[self._spec(d) for d in first.get_input_details()],
            outputs=[self._spec(d) for d in first.get_output_details()],
        )

    def _name(self, detail: Mapping[str, Any]) -> str:
        return self._names.get(int(detail["index"]), str(detail["name"]))

    def _spec(self, detail: Mapping[str, Any]) -> TensorSpec:
        shape = detail["shape"]
        signature = detail.get("shape_signature")
        if signature is not None and len(signature) == len(shape):
            shape = signature
        quantized = _quantization(detail) is not None
        datatype = Datatype.FP32 if quantized else datatype_of(np.dtype(detail["dtype"]))
        return TensorSpec(
            name=self._name(detail), datatype=datatype, shape=tuple(int(d) for d in shape)
        )

    @classmethod
    def model_file(cls) -> str:
        return artifact_file("tflite")

    @classmethod
    def load(cls, path: Path, options: BackendOptions) -> Backend:
        interpreter_class, runtime = _interpreter_class()
        interpreters = []
        threads = options.intra_op_threads or None
        try:
            for _ in range(options.instance_count):
                interpreter = interpreter_class(model_path=str(path), num_threads=threads)
                interpreter.allocate_tensors()
                interpreters.append(interpreter)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{path.name}: LiteRT cannot load it: {exc}") from exc
        return cls(interpreters, runtime)

    def infer(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        interpreter = self._pool.get()
        try:
            return self._run(interpreter, inputs)
        except (ValueError, RuntimeError) as exc:
            raise InferenceError(f"LiteRT failed: {exc}") from exc
        finally:
            self._pool.put(interpreter)

    def _run(
        self, interpreter: Any, inputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> dict[str, np.ndarray[Any, Any]]:
        details = interpreter.get_input_details()
        resized = False
        for detail in details:
            value = inputs[self._name(detail)]
            if tuple(detail["shape"]) != value.shape:
                interpreter.resize_tensor_input(detail["index"], list(value.shape), strict=False)
                resized = True
        if resized:
            interpreter.allocate_tensors()
            details = interpreter.get_input_details()
        for detail in details:
            value = inputs[self._name(detail)]
            quant = _quantization(detail)
            if quant is not None:
                scale, zero_point = quant
                info = np.iinfo(detail["dtype"])
                value = np.clip(np.round(value / scale) + zero_point, info.min, info.max)
            interpreter.set_tensor(detail["index"], value.astype(detail["dtype"], copy=False))
        interpreter.invoke()
        out: dict[str, np.ndarray[Any, Any]] = {}
        for detail in interpreter.get_output_details():
            value = interpreter.get_tensor(detail["index"])
            quant = _quantization(detail)
            if quant is not None:
                scale, zero_point = quant
                value = ((value.astype(np.float32) - zero_point) * scale).astype(np.float32)
            out[self._name(detail)] = value.copy()
        return out

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait()
