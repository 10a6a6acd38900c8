"""The VQC beside classical baselines on the same features and split.

The split is rebuilt from the model file's training record (dataset, seed, test fraction), and
the baselines (scikit-learn's logistic regression and a small MLP) train on the same
preprocessed features the circuit sees, so the comparison is between models, not inputs.
Inference time is measured per sample, both for the whole test set in one batch and for
batches of one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import Split, load_dataset, split_dataset
from .errors import QuantumError
from .inference import QuantumClassifier, SimulatorOptions
from .schema import ModelFile, load_model_file

__all__ = ["Evaluation", "Row", "evaluate", "format_table"]


@dataclass(frozen=True, kw_only=True)
class Row:
    model: str
    test_accuracy: float
    batched_us_per_sample: float
    single_us_per_sample: float


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    dataset: str
    num_features: int
    num_qubits: int
    train_samples: int
    test_samples: int
    rows: list[Row]


def _time_per_sample_us(
    fn: Callable[[Any], Any], x: np.ndarray[Any, Any], *, repeats: int
) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        samples.append((time.perf_counter() - start) / len(x))
    return statistics.median(samples) * 1e6


def _row(
    name: str,
    proba: Callable[[Any], Any],
    classes: list[str],
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    repeats: int,
    singles: int,
) -> Row:
    predicted = np.asarray(classes, dtype=object)[np.asarray(proba(x)).argmax(axis=1)]
    one = x[: min(singles, len(x))]
    single = statistics.median(
        _time_per_sample_us(proba, one[i : i + 1], repeats=1) for i in range(len(one))
    )
    return Row(
        model=name,
        test_accuracy=float(np.mean(predicted == y)),
        batched_us_per_sample=_time_per_sample_us(proba, x, repeats=repeats),
        single_us_per_sample=single,
    )


def rebuild_split(model: ModelFile) -> Split:
    t = model.training
    dataset = load_dataset(t.dataset, label_column=t.label_column)
    return split_dataset(dataset, test_fraction=t.test_fraction, seed=t.seed, max_train=t.max_train)


def evaluate(
    model_path: Path,
    *,
    simulators: list[SimulatorOptions] | None = None,
    seed: int = 0,
    repeats: int = 5,
    singles: int = 20,
) -> Evaluation:
    """Accuracy and time per sample for the VQC (on each simulator) and the baselines."""
    try:
        from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
        from sklearn.neural_network import MLPClassifier  # type: ignore[import-untyped]
    except ImportError as exc:
        raise QuantumError("evaluation needs scikit-learn for its baselines") from exc
    model = load_model_file(model_path)
    split = rebuild_split(model)
    if not len(split.x_test):
        raise QuantumError("the model was trained without a test split")
    classes = list(model.classes)
    pre = model.preprocessing.build()
    x_train = pre.transform(split.x_train)
    rows = []
    for options in simulators or [SimulatorOptions()]:
        classifier = QuantumClassifier(model, options)
        rows.append(
            _row(
                f"VQC ({options.label})",
                classifier.predict_proba,
                classes,
                split.x_test,
                split.y_test,
                repeats,
                singles,
            )
        )
    baselines: list[tuple[str, Any]] = [
        ("logistic regression", LogisticRegression(max_iter=1000)),
        (
            "MLP (16 hidden, scikit-learn)",
            MLPClassifier(hidden_layer_sizes=(16,), max_iter=2000, random_state=seed),
        ),
    ]
    for name, estimator in baselines:
        estimator.fit(x_train, split.y_train)
        order = [list(estimator.classes_).index(c) for c in classes]

        def proba(x: Any, estimator: Any = estimator, order: list[int] = order) -> Any:
            return estimator.predict_proba(pre.transform(x))[:, order]

        rows.append(_row(name, proba, classes, split.x_test, split.y_test, repeats, singles))
    return Evaluation(
        dataset=model.training.dataset,
        num_features=model.num_features,
        num_qubits=model.circuit.num_qubits,
        train_samples=len(split.x_train),
        test_samples=len(split.x_test),
        rows=rows,
    )


def format_table(evaluation: Evaluation) -> str:
    """Markdown, for the terminal and docs/quantum.md."""
    head = (
        f"{evaluation.dataset}: {evaluation.num_features} features -> {evaluation.num_qubits} "
        f"(qubits), {evaluation.train_samples} training and {evaluation.test_samples} test samples"
    )
    lines = [
        head,
        "",
        "| model | test accuracy | µs/sample, batched | µs/sample, one at a time |",
        "|---|---:|---:|---:|",
    ]
    for row in evaluation.rows:
        lines.append(
            f"| {row.model} | {row.test_accuracy:.3f} | {row.batched_us_per_sample:,.0f} "
            f"| {row.single_us_per_sample:,.0f} |"
        )
    return "\n".join(lines)
