"""The interface every backend implements, and the registry that loads them lazily by name."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np

from protocols import Datatype

from ..errors import BackendUnavailableError, ConfigError

__all__ = [
    "BACKENDS",
    "MODEL_FILES",
    "Backend",
    "BackendName",
    "BackendOptions",
    "TensorSpec",
    "load_backend_class",
]

BackendName = Literal["onnxruntime", "tflite", "tensorrt", "quantum"]

BACKENDS: dict[str, str] = {
    "onnxruntime": "cloud_hub.backends.onnxruntime:OnnxRuntimeBackend",
    "tflite": "cloud_hub.backends.tflite:TFLiteBackend",
    "tensorrt": "cloud_hub.backends.tensorrt:TensorRTBackend",
    "quantum": "cloud_hub.backends.quantum:QuantumBackend",
}
"""Backend name -> ``module:class``; imported only when a model names it."""

MODEL_FILES: dict[str, str] = {
    "onnxruntime": "model.onnx",
    "tflite": "model.tflite",
    "tensorrt": "model.plan",
    "quantum": "model.qml.json",
}
"""The file a version folder holds for each backend (Triton's default names)."""

assert set(BACKENDS) == set(MODEL_FILES) == set(get_args(BackendName))


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """An input or output as the model file declares it; ``-1`` marks a variable dimension."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """What a backend may take from the model's config.yaml."""

    instance_count: int = 1
    """Batches that may run at once; backends that are not thread-safe keep one copy each."""
    intra_op_threads: int = 0
    """0 lets the runtime choose."""
    inter_op_threads: int = 0
    device: Literal["auto", "cpu", "gpu"] = "auto"
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Backend-specific settings from ``parameters:`` in config.yaml."""


class Backend(Protocol):
    """A loaded model. ``infer`` may be called from several threads at once.

    Optional, looked up by the repository when present: ``labels`` (class names, used when
    config.yaml names none), ``parameters`` (shown in the model's metadata) and
    ``validate(inputs)`` (value checks per request, before batching; raises ``BadRequestError``).
    """

    name: str
    """The runtime and where it runs, for metadata and logs (``onnxruntime:CPUExecutionProvider``)."""

    @classmethod
    def load(cls, path: Path, options: BackendOptions) -> Backend: ...

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    def infer(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        """Run one batch; arrays are checked against :attr:`inputs` by the caller."""
        ...

    def close(self) -> None: ...


def load_backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``, imported now."""
    target = BACKENDS.get(name)
    if target is None:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {name!r} cannot be imported ({exc}); install the extra that provides it"
        ) from exc
    cls: type[Backend] = getattr(module, attr)
    return cls
