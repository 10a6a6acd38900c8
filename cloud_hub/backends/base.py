"""The base class every backend derives from, and the registry that loads them lazily by name.

A backend declares what it must (``model_file``, ``load``, ``infer``, ``close``) and inherits a
default for each optional hook, so the repository reads them directly::

    Backend
     ├── model_file()    the file a version folder holds (Triton's default name)   required
     ├── load()          build one from that file and the config's options          required
     ├── infer()         run one batch                                               required
     ├── close()         release the runtime                                        required
     ├── inputs/outputs  the tensors the file declares (given to ``__init__``)
     ├── labels          class names, when config.yaml names none                   default None
     ├── parameters      shown in the model's metadata                              default None
     ├── shape_ranges    the shapes each input takes (TensorRT profiles)            default {}
     └── validate()      value checks per request, before batching                  default none
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

import numpy as np

from protocols import Datatype

from ..errors import BackendUnavailableError, ConfigError

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendName",
    "BackendOptions",
    "ShapeRange",
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

assert set(BACKENDS) == set(get_args(BackendName))


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """An input or output as the model file declares it; ``-1`` marks a variable dimension."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class ShapeRange:
    """The shapes an input takes: each dimension in [min, max] (``opt``: the one tuned for)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @classmethod
    def fixed(cls, shape: tuple[int, ...]) -> ShapeRange:
        return cls(min=shape, opt=shape, max=shape)

    @property
    def bounds(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.min, self.max


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


class Backend(abc.ABC):
    """A loaded model. ``infer`` may be called from several threads at once."""

    name: str
    """The runtime and where it runs, for metadata and logs (``onnxruntime:CPUExecutionProvider``)."""

    labels: Sequence[str] | None = None
    """Class names in output order; the repository uses them when config.yaml names none."""

    parameters: Mapping[str, Any] | None = None
    """Shown in the model's metadata, so clients see what they are calling."""

    shape_ranges: Mapping[str, ShapeRange] = MappingProxyType({})
    """Input -> the shapes it takes, for runtimes with fixed ranges; the repository refuses a
    ``max_batch_size`` above the largest first dimension. Empty: any shape the file allows."""

    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    def __init__(
        self, *, name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
    ) -> None:
        self.name = name
        self._inputs = list(inputs)
        self._outputs = list(outputs)

    @classmethod
    @abc.abstractmethod
    def model_file(cls) -> str:
        """The file a version folder holds for this backend (``model.onnx``)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: Path, options: BackendOptions) -> Backend:
        """Load the model file at ``path``; :class:`~cloud_hub.errors.ModelLoadError` if not."""

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def validate(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> None:  # noqa: B027
        """Value checks for one request, run before batching, so a bad request is refused alone
        instead of failing the batch it would have joined; raise
        :class:`~cloud_hub.errors.BadRequestError`. Shapes and datatypes are checked already."""

    @abc.abstractmethod
    def infer(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        """Run one batch; arrays are checked against :attr:`inputs` by the caller."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the runtime; the repository calls it once no batch is running."""


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
