"""What every interpreter backend offers, and the values that describe a loaded model.

A :class:`Backend` is one interpreter of one model. It is not thread-safe: the agent gives each
worker its own (see :mod:`edge_agent.models`). Callers always see float tensors for quantized
models; ``storage_dtype`` and ``quantization`` say what the interpreter really holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from protocols import Datatype

__all__ = [
    "RUNTIMES",
    "RUNTIME_ORDER",
    "Array",
    "Backend",
    "ModelSignature",
    "Quantization",
    "RuntimeChoice",
    "RuntimeName",
    "TensorSpec",
]

Array = np.ndarray[Any, Any]
RuntimeName = Literal["ai_edge_litert", "tflite_runtime", "tensorflow"]
RuntimeChoice = Literal["auto", "ai_edge_litert", "tflite_runtime", "tensorflow"]

RUNTIME_ORDER: tuple[RuntimeName, ...] = ("ai_edge_litert", "tflite_runtime", "tensorflow")
"""Lightest first: the agent uses the first one that imports."""

RUNTIMES: dict[RuntimeName, str] = {
    "ai_edge_litert": "edge_agent.runtime.litert:LiteRTBackend",
    "tflite_runtime": "edge_agent.runtime.tflite:TFLiteRuntimeBackend",
    "tensorflow": "edge_agent.runtime.tensorflow_lite:TensorFlowLiteBackend",
}
"""Backend class of each runtime, imported only when chosen."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Quantization:
    """Affine per-tensor quantization: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorSpec:
    """One model input or output as callers see it."""

    name: str
    index: int
    """The interpreter's tensor index."""
    datatype: Datatype
    """What callers send or receive (FP32 for a quantized tensor)."""
    shape: tuple[int, ...]
    """``-1`` marks a dimension that may vary per request (a batch, usually)."""
    storage_dtype: np.dtype[Any]
    """What the interpreter holds (``int8`` for a full-integer model)."""
    quantization: Quantization | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def quantized(self) -> bool:
        return any(spec.quantization for spec in (*self.inputs, *self.outputs))

    @property
    def batched(self) -> bool:
        """Whether the model's first dimension is the batch: the first dimension of every input
        is dynamic (``-1`` in the shape signature), as Keras exports mark it. A model with fixed
        shapes (``[1, 10]``) is not batched, as Triton treats a ``max_batch_size: 0`` model."""
        return bool(self.inputs) and all(spec.shape[:1] == (-1,) for spec in self.inputs)


class Backend(Protocol):
    """One interpreter of one model."""

    @property
    def runtime(self) -> RuntimeName:
        """Which runtime's interpreter this is."""
        ...

    def load(self, path: Path, *, threads: int) -> ModelSignature:
        """Open the model and allocate its tensors; :class:`ModelLoadError` on failure."""
        ...

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run once on inputs already checked against the signature; outputs by name."""
        ...

    def close(self) -> None:
        """Release the interpreter; the backend cannot be used afterwards."""
        ...
