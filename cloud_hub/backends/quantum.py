"""The experimental variational quantum classifier (``model.qml.json``, :mod:`quantum`), simulated
on the CPU with qiskit.

Input ``features`` FP32 ``[batch, N]``, the raw features the model was trained on (its own
scaling and PCA run here). Outputs ``probabilities`` FP32 ``[batch, classes]`` and ``label``
BYTES ``[batch]``, the most probable class's name; the class names are the model's labels, so
the classification extension names them too. ``parameters`` in config.yaml pick the simulator:
``simulator: statevector | aer``, ``shots`` (absent: exact probabilities) and ``seed``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from protocols import Datatype

from ..errors import BackendUnavailableError, BadRequestError, ConfigError, ModelLoadError
from .base import Backend, BackendOptions, TensorSpec

__all__ = ["INPUT", "LABEL", "PROBABILITIES", "QuantumBackend"]

logger = logging.getLogger(__name__)

INPUT = "features"
PROBABILITIES = "probabilities"
LABEL = "label"
_PARAMETERS = frozenset({"simulator", "shots", "seed"})


class QuantumBackend(Backend):
    def __init__(self, classifier: Any) -> None:
        model = classifier.model
        classes = [str(c) for c in classifier.classes]
        super().__init__(
            name=f"quantum:{classifier.options.label} (experimental)",
            inputs=[TensorSpec(name=INPUT, datatype=Datatype.FP32, shape=(-1, model.num_features))],
            outputs=[
                TensorSpec(name=PROBABILITIES, datatype=Datatype.FP32, shape=(-1, len(classes))),
                TensorSpec(name=LABEL, datatype=Datatype.BYTES, shape=(-1,)),
            ],
        )
        self._classifier = classifier
        self.labels = classes
        self._label_bytes = np.asarray([c.encode() for c in classes], dtype=object)
        parameters: dict[str, Any] = {
            "experimental": True,
            "simulator": classifier.options.label,
            "num_qubits": model.circuit.num_qubits,
            "classes": ",".join(classes),
        }
        if model.metrics.test_accuracy is not None:
            parameters["test_accuracy"] = round(model.metrics.test_accuracy, 4)
        self.parameters = parameters

    @classmethod
    def model_file(cls) -> str:
        from quantum.schema import MODEL_FILE

        return MODEL_FILE

    @classmethod
    def load(cls, path: Path, options: BackendOptions) -> Backend:
        try:
            from quantum.errors import QuantumError, SimulatorUnavailableError
            from quantum.inference import QuantumClassifier, SimulatorOptions
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the quantum backend cannot be imported ({exc}); install hybrid-inference[quantum]"
            ) from exc
        unknown = set(options.parameters) - _PARAMETERS
        if unknown:
            raise ConfigError(
                f"the quantum backend takes parameters {', '.join(sorted(_PARAMETERS))}, "
                f"not {', '.join(sorted(unknown))}"
            )
        try:
            simulator = SimulatorOptions(**dict(options.parameters))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"quantum backend parameters: {exc}") from exc
        try:
            classifier = QuantumClassifier.load(path, simulator)
        except SimulatorUnavailableError as exc:
            raise BackendUnavailableError(str(exc)) from exc
        except QuantumError as exc:
            raise ModelLoadError(f"{path.name}: {exc}") from exc
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the quantum backend needs qiskit ({exc}); install hybrid-inference[quantum]"
            ) from exc
        logger.info(
            "loaded %s: %d qubits, %d classes, %s (experimental)",
            path,
            classifier.model.circuit.num_qubits,
            len(classifier.classes),
            simulator.label,
        )
        return cls(classifier)

    def validate(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Finite features and a non-empty batch: a NaN would fail the whole batch."""
        value = inputs.get(INPUT)
        if value is None:
            return
        if value.ndim < 1 or value.shape[0] == 0:
            raise BadRequestError(f"input {INPUT!r}: the batch is empty")
        bad = ~np.isfinite(value)
        if bad.any():
            rows = sorted({int(r) for r in np.nonzero(bad)[0]})
            raise BadRequestError(
                f"input {INPUT!r} must be finite; row(s) {', '.join(map(str, rows[:10]))} "
                "hold NaN or infinity"
            )

    def infer(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        from quantum.errors import InputError

        try:
            probabilities = self._classifier.predict_proba(inputs[INPUT])
        except InputError as exc:
            raise BadRequestError(f"input {INPUT!r}: {exc}") from exc
        return {
            PROBABILITIES: probabilities.astype(np.float32),
            LABEL: self._label_bytes[probabilities.argmax(axis=1)],
        }

    def close(self) -> None:
        self._classifier = None
