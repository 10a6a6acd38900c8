"""Class probabilities from a trained model file, batched.

Simulators:

- ``statevector`` without shots (the default): exact probabilities, computed as qiskit-machine-
  learning's own default sampler computes them during training (a ``Statevector`` per sample).
  The ansatz is fixed once trained, so its matrix is built once at load and each batch costs one
  feature-map state per sample and one matrix product.
- ``statevector`` with ``shots``: qiskit's ``StatevectorSampler``, measuring ``shots`` times per
  sample (what a device would give, with its sampling noise).
- ``aer``: qiskit-aer (the ``aer`` extra), exact (``save_probabilities``) or with shots
  (its ``SamplerV2``).

Measured bitstrings map to classes as the VQC mapped them in training (``index % classes``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .circuits import build_ansatz, build_feature_map
from .errors import ModelFileError, SimulatorUnavailableError
from .preprocess import check_features
from .schema import ModelFile, load_model_file

__all__ = ["SIMULATORS", "QuantumClassifier", "SimulatorName", "SimulatorOptions"]

logger = logging.getLogger(__name__)

SimulatorName = Literal["statevector", "aer"]
SIMULATORS: tuple[SimulatorName, ...] = ("statevector", "aer")

Array = np.ndarray[Any, Any]


@dataclass(frozen=True, kw_only=True)
class SimulatorOptions:
    simulator: SimulatorName = "statevector"
    shots: int | None = None
    """``None``: exact probabilities. A number: that many measurements per sample."""
    seed: int | None = None
    """Seeds the shot sampling, for reproducible sampled answers."""

    def __post_init__(self) -> None:
        if self.simulator not in SIMULATORS:
            raise ValueError(
                f"simulator must be one of {', '.join(SIMULATORS)}, not {self.simulator!r}"
            )
        if self.shots is not None and not 1 <= self.shots <= 10_000_000:
            raise ValueError(f"shots must be between 1 and 10000000, got {self.shots}")

    @property
    def label(self) -> str:
        return f"{self.simulator}:{'exact' if self.shots is None else f'{self.shots} shots'}"


class QuantumClassifier:
    """A loaded model: ``predict_proba`` and ``predict`` on raw features ``[batch, features]``.
    Safe to call from several threads."""

    def __init__(self, model: ModelFile, options: SimulatorOptions | None = None) -> None:
        self.model = model
        self.options = options or SimulatorOptions()
        self.classes = list(model.classes)
        self.num_features = model.num_features
        self._pre = model.preprocessing.build()
        circuit = model.circuit
        self._num_qubits = circuit.num_qubits
        self._feature_map = build_feature_map(circuit.feature_map, circuit.num_qubits)
        ansatz = build_ansatz(circuit.ansatz, circuit.num_qubits)
        _check_names("feature map", self._feature_map, circuit.input_parameters)
        _check_names("ansatz", ansatz, circuit.weight_parameters)
        self._weights = dict(zip(ansatz.parameters, model.weights, strict=True))
        self._ansatz = ansatz.assign_parameters(self._weights)
        states = 2**circuit.num_qubits
        k = model.interpretation.num_classes
        # Bitstring index -> class: the VQC's parity interpretation as a [states, classes] matrix.
        self._to_class = np.zeros((states, k))
        self._to_class[np.arange(states), np.arange(states) % k] = 1.0
        self._lock = threading.Lock()
        self._run = self._setup()

    @classmethod
    def load(cls, path: Path, options: SimulatorOptions | None = None) -> QuantumClassifier:
        return cls(load_model_file(path), options)

    # -- public ----------------------------------------------------------------------------------

    def angles(self, features: Any) -> Array:
        """Checked raw features to the feature map's parameters."""
        return self._pre.transform(check_features(features, self.num_features))

    def predict_proba(self, features: Any) -> Array:
        """``[batch, classes]`` float64 probabilities, rows summing to 1."""
        probabilities: Array = self._run(self.angles(features)) @ self._to_class
        return probabilities

    def predict(self, features: Any) -> Array:
        """Class names, ``[batch]`` (an object array of ``str``)."""
        index = self.predict_proba(features).argmax(axis=1)
        return np.asarray([self.classes[i] for i in index], dtype=object)

    # -- simulators ------------------------------------------------------------------------------

    def _setup(self) -> Any:
        options = self.options
        if options.simulator == "aer":
            return self._setup_aer()
        if options.shots is None:
            from qiskit.quantum_info import Operator

            # Statevector's integer index has qubit 0 as its least significant bit, as the
            # sampler's bitstrings do; the rows of this matrix act on that basis.
            self._unitary_t = Operator(self._ansatz).data.T
            return self._exact
        from qiskit.primitives import StatevectorSampler

        self._sampler = StatevectorSampler(default_shots=options.shots, seed=options.seed)
        self._measured = self._full_circuit(measure=True)
        return self._sampled

    def _full_circuit(self, *, measure: bool) -> Any:
        from qiskit import QuantumCircuit

        circuit = QuantumCircuit(self._num_qubits)
        circuit.compose(self._feature_map, inplace=True)
        circuit.compose(self._ansatz, inplace=True)
        if measure:
            circuit.measure_all()
        return circuit

    def _exact(self, angles: Array) -> Array:
        from qiskit.quantum_info import Statevector

        states = np.stack(
            [
                Statevector(self._feature_map.assign_parameters(row, inplace=False)).data
                for row in angles
            ]
        )
        amplitudes = states @ self._unitary_t
        return np.abs(amplitudes) ** 2  # type: ignore[no-any-return]

    def _sampled(self, angles: Array) -> Array:
        with self._lock:  # the sampler's random generator is shared state
            result = self._sampler.run([(self._measured, angles)]).result()
        return self._counts_to_probabilities(result[0].data.meas, len(angles))

    def _counts_to_probabilities(self, bits: Any, batch: int) -> Array:
        out = np.zeros((batch, 2**self._num_qubits))
        for i in range(batch):
            counts = bits.get_int_counts(i)
            total = sum(counts.values())
            for index, count in counts.items():
                out[i, int(index)] = count / total
        return out

    def _setup_aer(self) -> Any:
        try:
            from qiskit import transpile
            from qiskit_aer import AerSimulator
            from qiskit_aer.primitives import SamplerV2
        except ImportError as exc:
            raise SimulatorUnavailableError(
                "simulator 'aer' needs qiskit-aer; install hybrid-inference[aer]"
            ) from exc
        if self.options.shots is not None:
            self._sampler = SamplerV2(default_shots=self.options.shots, seed=self.options.seed)
            self._measured = transpile(self._full_circuit(measure=True), AerSimulator())
            return self._sampled
        simulator = AerSimulator(method="statevector")
        circuit = self._full_circuit(measure=False)
        circuit.save_probabilities()
        self._aer = simulator
        self._aer_circuit = transpile(circuit, simulator)
        self._aer_inputs = list(self._feature_map.parameters)
        return self._aer_exact

    def _aer_exact(self, angles: Array) -> Array:
        binds = [{p: angles[:, j].tolist() for j, p in enumerate(self._aer_inputs)}]
        result = self._aer.run([self._aer_circuit], parameter_binds=binds).result()
        if not result.success:
            raise RuntimeError(f"qiskit-aer failed: {result.status}")
        return np.stack([np.asarray(result.data(i)["probabilities"]) for i in range(len(angles))])


def _check_names(kind: str, circuit: Any, expected: list[str]) -> None:
    names = [p.name for p in circuit.parameters]
    if names != expected:
        raise ModelFileError(
            f"the {kind} this qiskit builds has parameters {names[:4]}... ({len(names)}); the model "
            f"file was trained with {expected[:4]}... ({len(expected)}): an incompatible circuit "
            "library or a changed file"
        )
