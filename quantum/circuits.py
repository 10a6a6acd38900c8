"""Feature maps and ansatzes by name, so a model file names its circuit instead of storing it:
``{"name": "zz_feature_map", "reps": 2, "entanglement": "linear"}`` is rebuilt with qiskit's
circuit library function of that name. Parameter names are stored beside the weights and checked
when the circuit is rebuilt, so a library that builds a different circuit is caught at load."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ModelFileError, SimulatorUnavailableError

__all__ = ["ANSATZES", "FEATURE_MAPS", "build_ansatz", "build_feature_map"]

FEATURE_MAPS: dict[str, frozenset[str]] = {
    "zz_feature_map": frozenset({"reps", "entanglement", "alpha"}),
    "z_feature_map": frozenset({"reps", "alpha"}),
    "pauli_feature_map": frozenset({"reps", "entanglement", "alpha", "paulis"}),
}
"""Feature map name -> the keyword arguments a model file may give it."""

ANSATZES: dict[str, frozenset[str]] = {
    "real_amplitudes": frozenset({"reps", "entanglement", "skip_final_rotation_layer"}),
    "efficient_su2": frozenset({"reps", "entanglement", "su2_gates", "skip_final_rotation_layer"}),
}
"""Ansatz name -> the keyword arguments a model file may give it."""


def _library(name: str) -> Callable[..., Any]:
    try:
        from qiskit.circuit import library
    except ImportError as exc:
        raise SimulatorUnavailableError(
            "qiskit is not installed; install hybrid-inference[quantum]"
        ) from exc
    builder: Callable[..., Any] = getattr(library, name)
    return builder


def _build(kind: str, table: dict[str, frozenset[str]], spec: dict[str, Any], size: int) -> Any:
    options = dict(spec)
    name = options.pop("name", None)
    if name not in table:
        raise ModelFileError(f"unknown {kind} {name!r}; choose one of {', '.join(table)}")
    unknown = set(options) - table[name]
    if unknown:
        raise ModelFileError(
            f"{kind} {name!r} takes {', '.join(sorted(table[name]))}, not {', '.join(sorted(unknown))}"
        )
    builder = _library(name)
    try:
        return builder(size, **options)
    except Exception as exc:  # qiskit raises CircuitError, TypeError or ValueError here
        raise ModelFileError(f"{kind} {name!r} with {options}: {exc}") from exc


def build_feature_map(spec: dict[str, Any], num_qubits: int) -> Any:
    """The feature map circuit, its parameters named ``x[i]`` for feature ``i``."""
    return _build("feature map", FEATURE_MAPS, spec, num_qubits)


def build_ansatz(spec: dict[str, Any], num_qubits: int) -> Any:
    """The trainable circuit, its parameters ``θ[i]`` in the order of the stored weights."""
    return _build("ansatz", ANSATZES, spec, num_qubits)
