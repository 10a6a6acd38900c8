"""Train the demo's two digits classifiers: ``python -m demo.train OUT_DIR``.

Writes ``edge.keras`` (a 64-16-10 perceptron, 1.2k parameters), ``cloud.keras`` (two
convolutions and a dense layer, 94k parameters) and ``digits.npz``: ``x_train``/``y_train``
(1,400 digits) and ``x_test``/``y_test`` (the 397 held out), pixels as float32 in [0, 1].
The cloud model learns from all 1,400 training digits; the first edge release only from the
first 500 (``x_reference``/``y_reference``, the set distillation must not forget). The other 900
(``x_fleet``/``y_fleet``) are the stream the fleet sees in the demo's second round.
Input ``pixels`` FP32 [-1, 64], output softmax probabilities over the ten digits. Seeded, so a
rebuild gives the same split.
Run as its own process because it imports TensorFlow, which the rest of the demo does not need.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
TRAIN_SAMPLES = 1400
REFERENCE_SAMPLES = 500
"""The first edge release's training digits; the rest of the training split is the fleet's."""
INPUT_NAME = "pixels"
EDGE_EPOCHS = 60
CLOUD_EPOCHS = 30


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    return x[:TRAIN_SAMPLES], y[:TRAIN_SAMPLES], x[TRAIN_SAMPLES:], y[TRAIN_SAMPLES:]


def edge_model(keras: Any) -> Any:
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((64,), name=INPUT_NAME),
            layers.Dense(16, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="edge_digits",
    )


def cloud_model(keras: Any) -> Any:
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((64,), name=INPUT_NAME),
            layers.Reshape((8, 8, 1)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.3),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="cloud_digits",
    )


def train(out_dir: Path) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    keras = tf.keras
    x_train, y_train, x_test, y_test = split()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"train_samples": len(x_train), "test_samples": len(x_test)}
    x_ref, y_ref = x_train[:REFERENCE_SAMPLES], y_train[:REFERENCE_SAMPLES]
    for name, build, epochs, x_fit, y_fit in (
        ("edge", edge_model, EDGE_EPOCHS, x_ref, y_ref),
        ("cloud", cloud_model, CLOUD_EPOCHS, x_train, y_train),
    ):
        keras.utils.set_random_seed(SEED)
        model = build(keras)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x_fit, y_fit, epochs=epochs, batch_size=32, verbose=0)
        _, accuracy = model.evaluate(x_test, y_test, verbose=0)
        model.save(out_dir / f"{name}.keras")
        summary[name] = {
            "train_samples": len(x_fit),
            "parameters": int(model.count_params()),
            "epochs": epochs,
            "keras_test_accuracy": float(accuracy),
        }
    np.savez(
        out_dir / "digits.npz",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        x_reference=x_ref,
        y_reference=y_ref,
        x_fleet=x_train[REFERENCE_SAMPLES:],
        y_fleet=y_train[REFERENCE_SAMPLES:],
    )
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.train", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(train(args.out_dir)))


if __name__ == "__main__":
    main()
