"""The experimental variational quantum classifier, trained, saved and served through the hub.

Modules: ``data`` (datasets and the seeded split), ``preprocess`` (scaling and PCA in numpy),
``circuits`` (feature maps and ansatzes by name), ``schema`` (``model.qml.json``), ``train``
(qiskit-machine-learning's VQC), ``inference`` (class probabilities on a simulator),
``evaluate`` (beside classical baselines), ``cli`` (``python -m quantum``), ``errors``.
Importing the package imports neither qiskit nor scikit-learn.
"""

from .errors import (
    DatasetError,
    InputError,
    ModelFileError,
    QuantumError,
    SimulatorUnavailableError,
)

__all__ = [
    "DatasetError",
    "InputError",
    "ModelFileError",
    "QuantumError",
    "SimulatorUnavailableError",
]
