"""The experimental quantum classifier through the agent and the hub: the held-out iris rows,
one request each, every answer recorded.

The VQC (``artifacts.ensure_quantum``) is served by the hub's ``quantum`` backend as
``iris_vqc``; the agent has no such model on the device, only a remote one (``iris``) that it
always hands to the hub over MQTT. The rows are the test split the model was trained beside,
rebuilt by the ``quantum`` package from the seed and fraction its model file records.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.client import EdgeClient

from .errors import DemoError

INPUT_NAME = "features"
PROBABILITIES = "probabilities"
LABEL = "label"
WARMUP_REQUESTS = 3
"""Before the pass, not recorded: the first answers pay for connection set-up."""


@dataclass(frozen=True, kw_only=True)
class QuantumModel:
    """The trained VQC as its model file describes it, and the rows it was tested on."""

    path: Path
    classes: list[str]
    max_iterations: int
    """The COBYLA budget."""
    evaluations: int | None
    """Loss evaluations COBYLA made (it may pass the budget by a few)."""
    train_samples: int
    test_accuracy: float | None
    """Measured by ``quantum train`` on the same held-out rows, in-process, at training."""
    training_s: float
    x_test: np.ndarray[Any, Any]
    y_test: list[str]


def load(folder: Path) -> QuantumModel:
    """The model file (validated) and its held-out rows, split the way training split them."""
    from quantum.data import load_dataset, split_dataset
    from quantum.errors import QuantumError
    from quantum.schema import MODEL_FILE, load_model_file

    path = folder / MODEL_FILE
    try:
        model = load_model_file(path)
        record = model.training
        split = split_dataset(
            load_dataset(record.dataset, label_column=record.label_column),
            test_fraction=record.test_fraction,
            seed=record.seed,
            max_train=record.max_train,
        )
    except QuantumError as exc:
        raise DemoError(f"the quantum classifier's file cannot be used: {exc}") from exc
    if len(split.y_test) != record.test_samples:
        raise DemoError(
            f"{path} was tested on {record.test_samples} rows, the rebuilt split has "
            f"{len(split.y_test)}: the split is not the one it was trained beside"
        )
    return QuantumModel(
        path=path,
        classes=list(model.classes),
        max_iterations=record.max_iterations,
        evaluations=record.iterations,
        train_samples=record.train_samples,
        test_accuracy=model.metrics.test_accuracy,
        training_s=record.duration_s,
        x_test=split.x_test.astype(np.float32),
        y_test=[str(v) for v in split.y_test],
    )


@dataclass
class QuantumPass:
    """The agent's answers to every held-out row, in order."""

    model: str
    labels: list[str]
    features: list[list[float]] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    """The probability of the predicted class."""
    latencies_s: list[float] = field(default_factory=list)
    served_by: list[str] = field(default_factory=list)
    cloud_models: list[str] = field(default_factory=list)

    COLUMNS = (
        "index",
        "features",
        "label",
        "prediction",
        "probability",
        "served_by",
        "cloud_model",
        "latency_ms",
    )

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.COLUMNS)
            for i, label in enumerate(self.labels):
                writer.writerow(
                    [
                        i,
                        " ".join(repr(v) for v in self.features[i]),
                        label,
                        self.predictions[i],
                        repr(self.probabilities[i]),
                        self.served_by[i],
                        self.cloud_models[i],
                        f"{self.latencies_s[i] * 1e3:.4f}",
                    ]
                )


def _label(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream(client: EdgeClient, model: str, quantum: QuantumModel) -> QuantumPass:
    """One request per row through the agent's local API; latency is the caller's."""
    x = quantum.x_test
    for i in range(min(WARMUP_REQUESTS, len(x))):
        client.infer(model, {INPUT_NAME: x[i : i + 1]}, request_id=f"iris-warmup-{i}")
    recorded = QuantumPass(model=model, labels=list(quantum.y_test))
    for i in range(len(x)):
        start = time.perf_counter()
        result = client.infer(model, {INPUT_NAME: x[i : i + 1]}, request_id=f"iris-{i}")
        elapsed = time.perf_counter() - start
        probabilities = np.asarray(result.outputs[PROBABILITIES], dtype=np.float64)[0]
        recorded.features.append([float(v) for v in x[i]])
        recorded.predictions.append(_label(np.asarray(result.outputs[LABEL]).reshape(-1)[0]))
        recorded.probabilities.append(float(probabilities.max()))
        recorded.latencies_s.append(elapsed)
        recorded.served_by.append(result.served_by or "")
        recorded.cloud_models.append(str(result.parameters.get("cloud_model", "")))
    return recorded
