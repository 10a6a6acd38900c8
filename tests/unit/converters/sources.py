"""Source models for the converter tests, built once and cached under ``.cache/test-models/converter``.

- ``digits_cnn.keras``: a conv net on scikit-learn's 8x8 digits, the same split as
  :mod:`tests.support.models` (1,400 training images, 397 held out), wide enough (151k
  parameters, 600 KB in float32) that a TFLite file's header does not hide the weights' size.
- ``digits_data.npz``: ``x_train``, ``x_test`` (float32 in [0, 1]) and ``y_test``.
- ``shapes100.keras`` and ``shapes100_data.npz``: a conv net trained on generated 16x16 images
  of 100 classes with a learnable structure: each class is a fixed sum of four Gaussian blobs,
  each image its class's pattern shifted by up to a pixel, scaled by 0.7 to 1.3 and under
  Gaussian noise (sigma 0.28). 6,000 training and 2,000 held-out images; about 95% held-out
  accuracy after 10 epochs, trained in well under a minute.
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
SHAPES_RECIPE = 1
EPOCHS = 20
SHAPES_CLASSES = 100
SHAPES_SIZE = 16
SHAPES_NOISE = 0.28
SHAPES_EPOCHS = 10


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


@dataclass(frozen=True)
class ShapesSource:
    keras: Path
    data: Path

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``x_train``, ``x_test`` (float32 ``[N, 16, 16, 1]``) and ``y_test``."""
        with np.load(self.data) as data:
            return data["x_train"], data["x_test"], data["y_test"]


def _shapes_patterns(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SHAPES_SIZE, 0:SHAPES_SIZE]
    patterns = np.zeros((SHAPES_CLASSES, SHAPES_SIZE, SHAPES_SIZE))
    for pattern in patterns:
        for _ in range(4):
            cy, cx = rng.uniform(0, SHAPES_SIZE, 2)
            width, weight = rng.uniform(1.5, 4), rng.uniform(-1, 1)
            pattern += weight * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    return patterns


def _shapes_images(
    patterns: np.ndarray, per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(SHAPES_CLASSES), per_class)
    shifts = rng.integers(-1, 2, (len(y), 2))
    x = np.stack([np.roll(patterns[c], tuple(s), (0, 1)) for c, s in zip(y, shifts, strict=True)])
    x = x * rng.uniform(0.7, 1.3, (len(y), 1, 1)) + rng.normal(0, SHAPES_NOISE, x.shape)
    order = rng.permutation(len(y))
    return ((x[order, :, :, None] + 2) / 4).astype(np.float32), y[order]


def ensure_shapes100_source(root: Path | None = None) -> ShapesSource:
    """The 100-class model and its data (see the module's docstring), built once."""
    root = root or cache_root()
    source = ShapesSource(keras=root / "shapes100.keras", data=root / "shapes100_data.npz")
    if _cached(root, "shapes100", SHAPES_RECIPE):
        return source
    if not _can_build():
        raise models.ModelsUnavailableError(f"no 100-class source in {root} and no TensorFlow")
    tf = _tensorflow()
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(models.SEED)
    patterns = _shapes_patterns(rng)
    x_train, y_train = _shapes_images(patterns, 60, rng)
    x_test, y_test = _shapes_images(patterns, 20, rng)
    tf.keras.utils.set_random_seed(models.SEED)
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            tf.keras.Input((SHAPES_SIZE, SHAPES_SIZE, 1), name="image"),
            layers.Conv2D(32, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(SHAPES_CLASSES, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=SHAPES_EPOCHS, batch_size=64, verbose=0)
    model.save(source.keras)
    np.savez(source.data, x_train=x_train, x_test=x_test, y_test=y_test)
    _record(root, "shapes100", SHAPES_RECIPE, [source.keras, source.data])
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
