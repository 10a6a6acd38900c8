"""Training: data -> preprocessing -> qiskit-machine-learning's ``VQC`` -> ``model.qml.json``.

Seeded throughout (split, initial weights, the optimizer's own randomness), so one config gives
one file. The VQC is trained with its default exact sampler; its labels are passed one-hot in
the order of ``classes``, so output ``i`` of the file is ``classes[i]``.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .circuits import build_ansatz, build_feature_map
from .data import Split, load_dataset, split_dataset
from .errors import QuantumError
from .inference import QuantumClassifier
from .preprocess import DEFAULT_RANGE, fit_preprocessor
from .schema import (
    MODEL_FILE,
    Circuit,
    Interpretation,
    Metrics,
    ModelFile,
    Preprocessing,
    Training,
    save_model_file,
)

__all__ = ["OPTIMIZERS", "TrainConfig", "TrainResult", "train"]

logger = logging.getLogger(__name__)

OPTIMIZERS = ("cobyla", "spsa", "nelder_mead", "l_bfgs_b")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    dataset: str
    """``iris``, ``digits`` or a CSV file."""
    num_qubits: int
    """Features after preprocessing, one per qubit (PCA when the data has more)."""
    out_dir: Path | None = None
    label_column: str | None = None
    feature_map: dict[str, Any] = field(
        default_factory=lambda: {"name": "z_feature_map", "reps": 2}
    )
    ansatz: dict[str, Any] = field(
        default_factory=lambda: {"name": "real_amplitudes", "reps": 3, "entanglement": "full"}
    )
    optimizer: str = "cobyla"
    max_iterations: int = 100
    seed: int = 0
    test_fraction: float = 0.3
    max_train: int | None = None
    """Train on a stratified subset of at most this many rows (quick runs)."""
    feature_range: tuple[float, float] = DEFAULT_RANGE


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    model: ModelFile
    path: Path | None
    vqc: Any
    """The trained ``qiskit_machine_learning`` VQC (for comparison; not saved)."""
    split: Split


def _optimizer(name: str, max_iterations: int) -> Any:
    from qiskit_machine_learning import optimizers

    if name not in OPTIMIZERS:
        raise QuantumError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    cls = getattr(optimizers, name.upper())
    return cls(maxiter=max_iterations)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("qiskit", "qiskit-machine-learning", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def train(
    config: TrainConfig, *, progress: Callable[[int, float], None] | None = None
) -> TrainResult:
    """Train, evaluate on the held-out split and, with ``out_dir``, write ``model.qml.json``."""
    try:
        from qiskit_machine_learning.algorithms.classifiers import VQC
        from qiskit_machine_learning.utils import algorithm_globals
    except ImportError as exc:
        raise QuantumError(
            "training needs qiskit-machine-learning; install hybrid-inference[quantum]"
        ) from exc
    started = time.perf_counter()
    dataset = load_dataset(config.dataset, label_column=config.label_column)
    split = split_dataset(
        dataset, test_fraction=config.test_fraction, seed=config.seed, max_train=config.max_train
    )
    if dataset.features.shape[1] < config.num_qubits:
        raise QuantumError(
            f"{dataset.name} has {dataset.features.shape[1]} features, fewer than the "
            f"{config.num_qubits} qubits asked for"
        )
    classes = sorted(set(split.y_train.tolist()))
    if len(classes) > 2**config.num_qubits:
        raise QuantumError(f"{config.num_qubits} qubits cannot tell {len(classes)} classes apart")
    pre = fit_preprocessor(split.x_train, config.num_qubits, feature_range=config.feature_range)
    x_train = pre.transform(split.x_train)
    index = {c: i for i, c in enumerate(classes)}
    y_train = np.eye(len(classes))[[index[c] for c in split.y_train]]

    feature_map = build_feature_map(config.feature_map, config.num_qubits)
    ansatz = build_ansatz(config.ansatz, config.num_qubits)
    algorithm_globals.random_seed = config.seed
    rng = np.random.default_rng(config.seed)
    initial = rng.uniform(-np.pi, np.pi, ansatz.num_parameters)
    losses: list[float] = []

    def callback(weights: np.ndarray[Any, Any], value: float) -> None:
        losses.append(float(value))
        if progress is not None:
            progress(len(losses), float(value))

    vqc = VQC(
        feature_map=feature_map,
        ansatz=ansatz,
        loss="cross_entropy",
        optimizer=_optimizer(config.optimizer, config.max_iterations),
        initial_point=initial,
        callback=callback,
        output_shape=len(classes),
    )
    logger.info(
        "training a VQC on %s: %d qubits, %d weights, %d classes, %d training rows",
        dataset.name,
        config.num_qubits,
        ansatz.num_parameters,
        len(classes),
        len(x_train),
    )
    vqc.fit(x_train, y_train)
    duration_s = time.perf_counter() - started
    weights = np.asarray(vqc.weights, dtype=np.float64)

    draft = ModelFile(
        num_features=dataset.features.shape[1],
        feature_names=dataset.feature_names,
        classes=classes,
        circuit=Circuit(
            num_qubits=config.num_qubits,
            feature_map=dict(config.feature_map),
            ansatz=dict(config.ansatz),
            input_parameters=[p.name for p in feature_map.parameters],
            weight_parameters=[p.name for p in ansatz.parameters],
        ),
        interpretation=Interpretation(num_classes=len(classes)),
        weights=weights.tolist(),
        preprocessing=Preprocessing.of(pre),
        training=Training(
            dataset=config.dataset,
            label_column=config.label_column,
            seed=config.seed,
            max_train=config.max_train,
            optimizer=config.optimizer,
            max_iterations=config.max_iterations,
            loss="cross_entropy",
            test_fraction=config.test_fraction,
            train_samples=len(split.x_train),
            test_samples=len(split.x_test),
            iterations=len(losses),
            final_loss=losses[-1] if losses else None,
            duration_s=duration_s,
        ),
        metrics=Metrics(train_accuracy=0.0),
        versions=_versions(),
    )
    classifier = QuantumClassifier(draft)
    metrics = Metrics(
        train_accuracy=_accuracy(classifier.predict(split.x_train), split.y_train),
        test_accuracy=_accuracy(classifier.predict(split.x_test), split.y_test)
        if len(split.x_test)
        else None,
    )
    model = draft.model_copy(update={"metrics": metrics})
    path = save_model_file(model, config.out_dir / MODEL_FILE) if config.out_dir else None
    logger.info(
        "trained in %.1f s: train accuracy %.3f, test accuracy %s",
        duration_s,
        metrics.train_accuracy,
        metrics.test_accuracy,
    )
    return TrainResult(model=model, path=path, vqc=vqc, split=split)


def _accuracy(predicted: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> float:
    return float(np.mean(predicted == expected))
