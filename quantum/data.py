"""Datasets for training and evaluation: scikit-learn's iris and digits (by name, imported only
then), or a CSV file with a header row whose label column is the last one unless named. The split
is stratified and seeded, in numpy, so every model and baseline sees the same rows."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError

__all__ = ["BUILTIN", "Dataset", "Split", "load_dataset", "split_dataset"]

BUILTIN = ("iris", "digits")


@dataclass(frozen=True, kw_only=True)
class Dataset:
    name: str
    features: np.ndarray[Any, np.dtype[np.float64]]
    labels: np.ndarray[Any, Any]
    """Class names as strings, one per row."""
    feature_names: list[str]


@dataclass(frozen=True, kw_only=True)
class Split:
    x_train: np.ndarray[Any, np.dtype[np.float64]]
    y_train: np.ndarray[Any, Any]
    x_test: np.ndarray[Any, np.dtype[np.float64]]
    y_test: np.ndarray[Any, Any]


def load_dataset(source: str, *, label_column: str | None = None) -> Dataset:
    """``iris``, ``digits`` or the path of a CSV file."""
    if source in BUILTIN:
        return _sklearn(source)
    path = Path(source)
    if path.suffix.lower() != ".csv" and not path.exists():
        raise DatasetError(f"unknown dataset {source!r}: give iris, digits or a .csv file")
    return _csv(path, label_column)


def _sklearn(name: str) -> Dataset:
    try:
        from sklearn import datasets  # type: ignore[import-untyped]
    except ImportError as exc:
        raise DatasetError(
            f"the {name!r} dataset comes from scikit-learn, which is not installed "
            "(pip install scikit-learn); or pass a CSV file"
        ) from exc
    bunch = datasets.load_iris() if name == "iris" else datasets.load_digits()
    target_names = [str(n) for n in bunch.target_names]
    labels = np.asarray([target_names[int(t)] for t in bunch.target], dtype=object)
    names = [str(n) for n in getattr(bunch, "feature_names", [])]
    features = np.asarray(bunch.data, dtype=np.float64)
    return Dataset(
        name=name,
        features=features,
        labels=labels,
        feature_names=names or [f"x{i}" for i in range(features.shape[1])],
    )


def _csv(path: Path, label_column: str | None) -> Dataset:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read it: {exc}") from exc
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise DatasetError(f"{path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label_column is None:
        label_index = len(header) - 1
    elif label_column in header:
        label_index = header.index(label_column)
    else:
        raise DatasetError(f"{path}: no column {label_column!r}; columns: {', '.join(header)}")
    feature_index = [i for i in range(len(header)) if i != label_index]
    if not feature_index:
        raise DatasetError(f"{path}: no feature columns beside the label")
    features = np.empty((len(rows) - 1, len(feature_index)), dtype=np.float64)
    labels = np.empty(len(rows) - 1, dtype=object)
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path}, line {n}: {len(row)} cells; the header has {len(header)}")
        try:
            features[n - 2] = [float(row[i]) for i in feature_index]
        except ValueError as exc:
            raise DatasetError(f"{path}, line {n}: {exc}") from None
        labels[n - 2] = row[label_index].strip()
    if not np.isfinite(features).all():
        raise DatasetError(f"{path}: features must be finite numbers")
    return Dataset(
        name=path.name,
        features=features,
        labels=labels,
        feature_names=[header[i] for i in feature_index],
    )


def split_dataset(
    dataset: Dataset, *, test_fraction: float, seed: int, max_train: int | None = None
) -> Split:
    """A stratified split: each class gives ``test_fraction`` of its rows (at least one) to the
    test set. ``max_train`` keeps a stratified subset of the training rows (for quick runs)."""
    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    classes = sorted(set(dataset.labels.tolist()))
    if len(classes) < 2:
        raise DatasetError(f"{dataset.name}: needs at least two classes, found {classes}")
    train: list[int] = []
    test: list[int] = []
    for label in classes:
        rows = rng.permutation(np.flatnonzero(dataset.labels == label))
        if len(rows) < 2:
            raise DatasetError(f"{dataset.name}: class {label!r} has fewer than two rows")
        cut = min(len(rows) - 1, max(1, round(len(rows) * test_fraction)))
        test.extend(rows[:cut].tolist())
        train.extend(rows[cut:].tolist())
    train_rows = rng.permutation(np.asarray(train))
    if max_train is not None and max_train < len(train_rows):
        per_class = {c: 0 for c in classes}
        quota = max(1, max_train // len(classes))
        kept = []
        for r in train_rows:
            label = dataset.labels[r]
            if per_class[label] < quota:
                per_class[label] += 1
                kept.append(r)
        train_rows = np.asarray(kept)
    test_rows = np.sort(np.asarray(test))
    return Split(
        x_train=dataset.features[train_rows],
        y_train=dataset.labels[train_rows],
        x_test=dataset.features[test_rows],
        y_test=dataset.labels[test_rows],
    )
