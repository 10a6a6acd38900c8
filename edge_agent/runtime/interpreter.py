"""The backend shared by every runtime: LiteRT, tflite-runtime and TensorFlow Lite all ship the
same ``Interpreter`` API, so each runtime module only says how to import its class.

Tensor names are the model's signature names (``pixels``, ``output_0``) when it has exactly one
signature, as Keras-converted models do, else the raw tensor names. Inputs whose shape differs from
the last call are resized (``resize_tensor_input`` + ``allocate_tensors``), so a variable batch
dimension costs a reallocation only when it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from protocols import Datatype, DatatypeError, datatype_of

from ..errors import InferenceError, ModelLoadError, RuntimeUnavailableError
from .base import Array, ModelSignature, Quantization, RuntimeName, TensorSpec
from .quantization import dequantize, quantize

__all__ = ["InterpreterBackend"]

_QUANTIZED_STORAGE = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))


class InterpreterBackend:
    """One TFLite ``Interpreter``; subclasses name the package it comes from."""

    runtime: ClassVar[RuntimeName]

    @classmethod
    def interpreter_class(cls) -> Any:
        """Import and return the runtime's ``Interpreter`` class (lazily: it is heavy)."""
        raise NotImplementedError

    @classmethod
    def runtime_version(cls) -> str:
        raise NotImplementedError

    @classmethod
    def probe(cls) -> str:
        """The runtime's version if it imports here, else :class:`RuntimeUnavailableError`."""
        try:
            cls.interpreter_class()
            return cls.runtime_version()
        except Exception as exc:  # a broken install raises more than ImportError
            raise RuntimeUnavailableError(f"{cls.runtime}: {type(exc).__name__}: {exc}") from exc

    def __init__(self) -> None:
        self._interpreter: Any = None
        self._inputs: tuple[TensorSpec, ...] = ()
        self._outputs: tuple[TensorSpec, ...] = ()
        self._shapes: dict[int, tuple[int, ...]] = {}

    @classmethod
    def create_interpreter(cls, path: Path, threads: int) -> Any:
        return cls.interpreter_class()(model_path=str(path), num_threads=threads)

    def load(self, path: Path, *, threads: int) -> ModelSignature:
        try:
            interpreter = self.create_interpreter(path, threads)
            interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelLoadError(f"{path} is not a model {self.runtime} can load: {exc}") from exc
        signature = _read_signature(interpreter, path)
        self._interpreter = interpreter
        self._inputs = signature.inputs
        self._outputs = signature.outputs
        self._shapes = _current_shapes(interpreter)
        return signature

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        interpreter = self._interpreter
        if interpreter is None:
            raise InferenceError("the interpreter is closed")
        try:
            resized = False
            for spec in self._inputs:
                shape = inputs[spec.name].shape
                if shape != self._shapes[spec.index]:
                    interpreter.resize_tensor_input(spec.index, shape)
                    self._shapes[spec.index] = shape
                    resized = True
            if resized:
                interpreter.allocate_tensors()
            for spec in self._inputs:
                value = inputs[spec.name]
                if spec.quantization is not None:
                    value = quantize(value, spec.quantization, spec.storage_dtype)
                interpreter.set_tensor(spec.index, value)
            interpreter.invoke()
            outputs: dict[str, Array] = {}
            for spec in self._outputs:
                value = interpreter.get_tensor(spec.index)
                if spec.quantization is not None:
                    value = dequantize(value, spec.quantization)
                outputs[spec.name] = value
            return outputs
        except Exception as exc:
            self._shapes = _current_shapes(interpreter)  # a failed resize may leave others
            raise InferenceError(f"{self.runtime} failed to run the model: {exc}") from exc

    def close(self) -> None:
        self._interpreter = None


def _current_shapes(interpreter: Any) -> dict[int, tuple[int, ...]]:
    return {
        int(d["index"]): tuple(int(x) for x in d["shape"]) for d in interpreter.get_input_details()
    }


def _signature_names(interpreter: Any) -> dict[int, str]:
    """Tensor index -> signature name, when the model has exactly one signature."""
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
        # The runner holds a reference that blocks resize_tensor_input; let it go now.
        del runner
        return names
    except Exception:  # older runtimes without signature details: keep tensor names
        return {}


def _read_signature(interpreter: Any, path: Path) -> ModelSignature:
    names = _signature_names(interpreter)
    inputs = [_spec(d, names, path) for d in interpreter.get_input_details()]
    outputs = [_spec(d, names, path) for d in interpreter.get_output_details()]
    if len({s.name for s in inputs}) != len(inputs) or len({s.name for s in outputs}) != len(
        outputs
    ):
        inputs = [_spec(d, {}, path) for d in interpreter.get_input_details()]
        outputs = [_spec(d, {}, path) for d in interpreter.get_output_details()]
    return ModelSignature(inputs=tuple(inputs), outputs=tuple(outputs))


def _spec(details: Mapping[str, Any], names: Mapping[int, str], path: Path) -> TensorSpec:
    index = int(details["index"])
    name = names.get(index) or str(details["name"])
    storage = np.dtype(details["dtype"])
    signature = details.get("shape_signature")
    if signature is None or len(signature) != len(details["shape"]):
        signature = details["shape"]
    shape = tuple(int(x) for x in signature)
    quantization = _quantization(details, storage, name, path)
    if quantization is not None:
        return TensorSpec(
            name=name,
            index=index,
            datatype=Datatype.FP32,
            shape=shape,
            storage_dtype=storage,
            quantization=quantization,
        )
    try:
        datatype = datatype_of(storage)
    except DatatypeError as exc:
        raise ModelLoadError(f"{path}: tensor {name!r} has type {storage}: {exc}") from exc
    if datatype is Datatype.BYTES:
        raise ModelLoadError(f"{path}: tensor {name!r} holds strings, which are not supported")
    return TensorSpec(name=name, index=index, datatype=datatype, shape=shape, storage_dtype=storage)


def _quantization(
    details: Mapping[str, Any], storage: np.dtype[Any], name: str, path: Path
) -> Quantization | None:
    if storage not in _QUANTIZED_STORAGE:
        return None
    params = details.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", ()), dtype=np.float64).reshape(-1)
    zero_points = np.asarray(params.get("zero_points", ()), dtype=np.int64).reshape(-1)
    if scales.size == 0:
        scale, zero_point = details.get("quantization", (0.0, 0))
        scales = np.array([scale], dtype=np.float64)
        zero_points = np.array([zero_point], dtype=np.int64)
    if scales.size > 1:
        raise ModelLoadError(
            f"{path}: tensor {name!r} is quantized per axis; only per-tensor input and output "
            "quantization is supported"
        )
    if scales[0] == 0.0:
        return None  # a plain integer tensor, sent and received as is
    info = np.iinfo(storage)
    return Quantization(
        scale=float(scales[0]),
        zero_point=int(zero_points[0]) if zero_points.size else 0,
        qmin=int(info.min),
        qmax=int(info.max),
    )
