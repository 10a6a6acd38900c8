"""Errors of the quantum classifier.

QuantumError                  root
 ├── DatasetError             a dataset that cannot be loaded or split (unknown name, bad CSV)
 ├── ModelFileError           a model.qml.json that is corrupt, inconsistent or from an
 │                            incompatible format or circuit library
 ├── InputError (ValueError)  features the model cannot take: shape, non-finite values
 └── SimulatorUnavailableError  the chosen simulator (qiskit-aer) or qiskit itself is missing
"""

from __future__ import annotations

__all__ = [
    "DatasetError",
    "InputError",
    "ModelFileError",
    "QuantumError",
    "SimulatorUnavailableError",
]


class QuantumError(Exception):
    pass


class DatasetError(QuantumError):
    pass


class ModelFileError(QuantumError):
    pass


class InputError(QuantumError, ValueError):
    pass


class SimulatorUnavailableError(QuantumError):
    pass
