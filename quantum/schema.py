"""``model.qml.json``: a trained classifier as plain JSON (no pickle).

It names the circuit (feature map and ansatz from qiskit's library, with their options and the
parameter names they produced), holds the trained weights, the preprocessing as numbers, the
classes in output order, how measured bitstrings map to classes, the training settings and
metrics, and the library versions it was trained with. :func:`load_model_file` validates all of
it and says what is wrong with a corrupt or inconsistent file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ModelFileError
from .preprocess import Preprocessor

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MODEL_FILE",
    "Circuit",
    "Interpretation",
    "Metrics",
    "ModelFile",
    "Preprocessing",
    "Training",
    "load_model_file",
    "save_model_file",
]

FORMAT = "hybrid-inference/qml"
FORMAT_VERSION = 1
MODEL_FILE = "model.qml.json"
MAX_QUBITS = 16
"""Statevector simulation doubles its memory per qubit; 16 keeps a batch small."""

Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Circuit(_Strict):
    num_qubits: Annotated[int, Field(ge=1, le=MAX_QUBITS)]
    feature_map: dict[str, Any]
    """``{"name": "zz_feature_map", "reps": 2, ...}``: a function of ``qiskit.circuit.library``."""
    ansatz: dict[str, Any]
    input_parameters: list[str]
    """The feature map's parameter names, in feature order."""
    weight_parameters: list[str]
    """The ansatz's parameter names, in the order of ``weights``."""

    @model_validator(mode="after")
    def _named(self) -> Circuit:
        for kind, spec in (("feature_map", self.feature_map), ("ansatz", self.ansatz)):
            if not isinstance(spec.get("name"), str):
                raise ValueError(f"{kind} needs a 'name'")
        if len(self.input_parameters) != self.num_qubits:
            raise ValueError(
                f"{len(self.input_parameters)} input parameters for {self.num_qubits} qubits"
            )
        return self


class Interpretation(_Strict):
    """How a measured bitstring (read as an integer, qubit 0 the least significant bit) becomes a
    class index: ``parity`` is the VQC's default, ``index % num_classes``."""

    kind: Literal["parity"] = "parity"
    num_classes: Annotated[int, Field(ge=2)]


class Preprocessing(_Strict):
    mean: list[Finite]
    scale: list[Finite]
    components: list[list[Finite]] | None = None
    low: list[Finite]
    span: list[Finite]
    feature_range: tuple[Finite, Finite]

    @model_validator(mode="after")
    def _shapes(self) -> Preprocessing:
        if len(self.scale) != len(self.mean):
            raise ValueError(f"scale has {len(self.scale)} values, mean {len(self.mean)}")
        if any(s == 0 for s in self.scale) or any(s == 0 for s in self.span):
            raise ValueError("scale and span must not hold zeros")
        width = len(self.mean) if self.components is None else len(self.components)
        if self.components is not None and any(len(r) != len(self.mean) for r in self.components):
            raise ValueError(f"every principal component needs {len(self.mean)} values")
        if len(self.low) != width or len(self.span) != width:
            raise ValueError(f"low and span need {width} values")
        return self

    @classmethod
    def of(cls, p: Preprocessor) -> Preprocessing:
        return cls(
            mean=p.mean.tolist(),
            scale=p.scale.tolist(),
            components=None if p.components is None else p.components.tolist(),
            low=p.low.tolist(),
            span=p.span.tolist(),
            feature_range=p.feature_range,
        )

    def build(self) -> Preprocessor:
        return Preprocessor(
            mean=np.asarray(self.mean, dtype=np.float64),
            scale=np.asarray(self.scale, dtype=np.float64),
            components=None
            if self.components is None
            else np.asarray(self.components, dtype=np.float64),
            low=np.asarray(self.low, dtype=np.float64),
            span=np.asarray(self.span, dtype=np.float64),
            feature_range=self.feature_range,
        )


class Training(_Strict):
    dataset: str
    """``iris``, ``digits`` or the CSV path as given; with the fields below it rebuilds the split."""
    label_column: str | None = None
    seed: int
    max_train: int | None = None
    optimizer: str
    max_iterations: int
    loss: str
    test_fraction: float
    train_samples: int
    test_samples: int
    iterations: int | None = None
    """Objective evaluations the optimizer made."""
    final_loss: Finite | None = None
    duration_s: Finite


class Metrics(_Strict):
    train_accuracy: Annotated[float, Field(ge=0, le=1)]
    test_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None


class ModelFile(_Strict):
    format: Literal["hybrid-inference/qml"] = "hybrid-inference/qml"
    format_version: Literal[1] = 1
    experimental: Literal[True] = True
    num_features: Annotated[int, Field(ge=1)]
    feature_names: list[str] | None = None
    classes: list[str]
    circuit: Circuit
    interpretation: Interpretation
    weights: list[Finite]
    preprocessing: Preprocessing
    training: Training
    metrics: Metrics
    versions: dict[str, str]
    """Library versions at training time: qiskit, qiskit-machine-learning, numpy, python."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelFile:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be at least two distinct names")
        if self.interpretation.num_classes != len(self.classes):
            raise ValueError(
                f"interpretation maps to {self.interpretation.num_classes} classes; "
                f"{len(self.classes)} are named"
            )
        if len(self.classes) > 2**self.circuit.num_qubits:
            raise ValueError(
                f"{self.circuit.num_qubits} qubits cannot tell {len(self.classes)} classes"
            )
        if len(self.weights) != len(self.circuit.weight_parameters):
            raise ValueError(
                f"{len(self.weights)} weights for {len(self.circuit.weight_parameters)} ansatz parameters"
            )
        if len(self.preprocessing.mean) != self.num_features:
            raise ValueError(
                f"preprocessing takes {len(self.preprocessing.mean)} features, the model {self.num_features}"
            )
        if len(self.preprocessing.low) != self.circuit.num_qubits:
            raise ValueError(
                f"preprocessing yields {len(self.preprocessing.low)} values for {self.circuit.num_qubits} qubits"
            )
        if self.feature_names is not None and len(self.feature_names) != self.num_features:
            raise ValueError(
                f"{len(self.feature_names)} feature names for {self.num_features} features"
            )
        return self


def save_model_file(model: ModelFile, path: Path) -> Path:
    """Write atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(model.model_dump_json(indent=1) + "\n")
    tmp.replace(path)
    return path


def load_model_file(path: Path) -> ModelFile:
    """Read and validate; :class:`ModelFileError` names the file and what is wrong with it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: cannot read it: {exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    if raw.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a quantum model file (format {raw.get('format')!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {raw.get('format_version')!r}; this reader takes {FORMAT_VERSION}"
        )
    try:
        return ModelFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ModelFileError(f"{path}: {problems}") from None
