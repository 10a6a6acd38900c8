"""Source models for the converter tests, built once and cached under ``.cache/test-models/converter``.

- ``digits_cnn.keras``: a conv net on scikit-learn's 8x8 digits, the same split as
  :mod:`tests.support.models` (1,400 training images, 397 held out), wide enough (151k
  parameters, 600 KB in float32) that a TFLite file's header does not hide the weights' size.
- ``digits_data.npz``: ``x_train``, ``x_test`` (float32 in [0, 1]) and ``y_test``.
- ``mobilenet_v2.keras``: MobileNetV2 with ``weights=None``, its batch-norm statistics set from
  one batch of random images so that its activations neither vanish nor blow up (with the
  initial statistics every image gets the same flat 1/1000 answer, which makes any fidelity
  figure meaningless). Its classes stay near-ties: top-1 agreement on it says little.

Nothing is downloaded; building needs TensorFlow and scikit-learn.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import models

DIGITS_RECIPE = 1
MOBILENET_RECIPE = 1
EPOCHS = 20


@dataclass(frozen=True)
class DigitsSource:
    keras: Path
    data: Path

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with np.load(self.data) as data:
            return data["x_train"], data["x_test"], data["y_test"]


def cache_root() -> Path:
    return models.cache_dir() / "converter"


def _can_build() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "sklearn"))


def _tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recipe_file(root: Path, key: str) -> Path:
    return root / f"{key}.recipe.json"


def _cached(root: Path, key: str, recipe: int) -> bool:
    try:
        entry = json.loads(_recipe_file(root, key).read_text())
    except (OSError, ValueError):
        return False
    files = entry.get("files") or {}
    return (
        entry.get("recipe") == recipe
        and bool(files)
        and all((root / n).is_file() and _digest(root / n) == d for n, d in files.items())
    )


def _record(root: Path, key: str, recipe: int, files: list[Path]) -> None:
    entry = {"recipe": recipe, "files": {f.name: _digest(f) for f in files}}
    temporary = root / f".{key}.recipe.tmp"
    temporary.write_text(json.dumps(entry, indent=2, sort_keys=True))
    temporary.replace(_recipe_file(root, key))


def ensure_digits_source(root: Path | None = None) -> DigitsSource:
    root = root or cache_root()
    source = DigitsSource(keras=root / "digits_cnn.keras", data=root / "digits_data.npz")
    if _cached(root, "digits_cnn", DIGITS_RECIPE):
        return source
    if not _can_build():
        raise models.ModelsUnavailableError(f"no digits source in {root} and no TensorFlow")
    tf = _tensorflow()
    from sklearn.datasets import load_digits

    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(models.SEED).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train = x[: models.TRAIN_SAMPLES], y[: models.TRAIN_SAMPLES]
    x_test, y_test = x[models.TRAIN_SAMPLES :], y[models.TRAIN_SAMPLES :]
    tf.keras.utils.set_random_seed(models.SEED)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((64,), name=models.DIGITS_INPUT),
            tf.keras.layers.Reshape((8, 8, 1)),
            tf.keras.layers.Conv2D(32, 3, activation="relu"),
            tf.keras.layers.Conv2D(64, 3, activation="relu"),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(128, activation="relu"),
            tf.keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    model.save(source.keras)
    np.savez(source.data, x_train=x_train, x_test=x_test, y_test=y_test)
    _record(root, "digits_cnn", DIGITS_RECIPE, [source.keras, source.data])
    return source


def ensure_mobilenet_v2(root: Path | None = None) -> Path:
    root = root or cache_root()
    path = root / "mobilenet_v2.keras"
    if _cached(root, "mobilenet_v2", MOBILENET_RECIPE):
        return path
    if not _can_build():
        raise models.ModelsUnavailableError(f"no MobileNetV2 in {root} and no TensorFlow")
    tf = _tensorflow()
    root.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(models.SEED)
    model = tf.keras.applications.MobileNetV2(weights=None)
    norms = [x for x in model.layers if isinstance(x, tf.keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    images = np.random.default_rng(models.SEED).uniform(-1, 1, (16, 224, 224, 3))
    model(images.astype(np.float32), training=True)
    for layer in norms:
        layer.momentum = 0.99
    model.save(path)
    _record(root, "mobilenet_v2", MOBILENET_RECIPE, [path])
    return path


def image_samples(path: Path, count: int, seed: int = 0) -> Path:
    """An ``.npz`` of ``count`` random 224x224x3 images in [-1, 1] (MobileNetV2's range)."""
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.uniform(-1, 1, (count, 224, 224, 3)).astype(np.float32))
    return path
