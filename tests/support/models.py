"""Test models: tiny TFLite models trained on scikit-learn's digits, built once and cached.

Building needs TensorFlow and scikit-learn; using the cache needs neither, so the edge tests also
run in a venv with only the edge extra. ``scripts/make_test_models.py`` fills the cache; the
fixtures reuse it when its manifest matches this recipe, and build it when it is missing and
TensorFlow imports. ``HYBRID_TEST_MODELS`` points at another cache folder.

The cache holds, for the digits models:
    digits_{fp32,fp16,int8}.tflite   input ``pixels`` FP32 [-1, 64], output ``output_0`` [-1, 10]
    digits_data.npz                  ``x`` (held-out digits, float32 in [0, 1]) and ``y`` (labels)
    digits_reference.npz             each model's outputs on ``x``, run on the interpreter directly
    digits_labels.txt                "zero" .. "nine"
and, on request, ``mobilenet_v2_fp16.tflite`` (MobileNetV2, weights=None, float16 weights).

Nothing here imports TensorFlow, scikit-learn or an interpreter at module import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV = "HYBRID_TEST_MODELS"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "test-models"
MANIFEST = "manifest.json"
DIGITS_RECIPE = 1
MOBILENET_RECIPE = 1
DIGITS_KINDS = ("fp32", "fp16", "int8")
DIGITS_LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_INPUT = "pixels"
DIGITS_OUTPUT = "output_0"
TRAIN_SAMPLES = 1400
SEED = 0


class ModelsUnavailableError(RuntimeError):
    """The cache lacks the models and TensorFlow is not there to build them."""


@dataclass(frozen=True)
class DigitsModels:
    root: Path

    def model(self, kind: str) -> Path:
        return self.root / f"digits_{kind}.tflite"

    @property
    def labels(self) -> Path:
        return self.root / "digits_labels.txt"

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.root / "digits_data.npz") as data:
            return np.asarray(data["x"]), np.asarray(data["y"])

    def reference(self, kind: str) -> np.ndarray:
        with np.load(self.root / "digits_reference.npz") as data:
            return np.asarray(data[kind])


def fixed_batch_model(digits: DigitsModels, kind: str, folder: Path) -> Path:
    """A copy of a digits model whose input has the fixed shape ``[1, 64]``, as a model exported
    without a batch dimension has (Triton's ``max_batch_size: 0``); its output is ``[1, 10]``.

    Made without TensorFlow, so the light edge venv can use it: the input's shape signature
    ``[-1, 64]`` (a flatbuffer int32 vector: length 2, then -1, 64) becomes ``[1, 64]``. The
    pattern occurs exactly once in the digits models; the weights stay as they are, so the
    copy answers as the original does for one row."""
    source = digits.model(kind).read_bytes()
    dynamic = struct.pack("<3i", 2, -1, 64)
    if source.count(dynamic) != 1:
        raise AssertionError(f"{digits.model(kind)}: expected one [-1, 64] shape signature")
    path = folder / f"digits_{kind}_fixed.tflite"
    path.write_bytes(source.replace(dynamic, struct.pack("<3i", 2, 1, 64)))
    return path


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def can_build() -> bool:
    """Building the models needs TensorFlow and scikit-learn (for the digits)."""
    return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "sklearn"))


# -- the interpreter, run directly ------------------------------------------------------------


def interpreter_class(runtime: str) -> Any:
    """The ``Interpreter`` class of a runtime, imported directly (not through the agent)."""
    if runtime == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    if runtime == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    if runtime == "tensorflow":
        import tensorflow as tf

        return tf.lite.Interpreter
    raise ValueError(f"unknown runtime {runtime!r}")


def first_available_runtime() -> str:
    for name in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
        try:
            interpreter_class(name)
        except Exception:
            continue
        return name
    raise ModelsUnavailableError("no TFLite interpreter package imports here")


def run_directly(interpreter: Any, x: np.ndarray, *, quantized_output: bool = False) -> np.ndarray:
    """One ``set_tensor``/``invoke``/``get_tensor`` on a single-input, single-output model.

    Int8 inputs are quantized and outputs dequantized with the tensors' own parameters (unless
    ``quantized_output``); the batch dimension is resized to ``x``'s.
    """
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    if tuple(inp["shape"]) != x.shape:
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()
    value = x
    if inp["dtype"] == np.int8:
        scale, zero_point = inp["quantization"]
        value = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], value)
    interpreter.invoke()
    result = interpreter.get_tensor(out["index"])
    if out["dtype"] == np.int8 and not quantized_output:
        scale, zero_point = out["quantization"]
        result = (result.astype(np.float32) - zero_point) * np.float32(scale)
    return np.asarray(result)


def run_model_directly(runtime: str, path: Path, x: np.ndarray, *, threads: int = 1) -> np.ndarray:
    interpreter = interpreter_class(runtime)(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return run_directly(interpreter, x)


def output_scale(runtime: str, path: Path) -> float:
    """The output's quantization step (0.0 for a float output)."""
    interpreter = interpreter_class(runtime)(model_path=str(path))
    return float(interpreter.get_output_details()[0]["quantization"][0])


# -- the cache --------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record(root: Path, key: str, recipe: int, files: list[Path]) -> None:
    manifest = _read_manifest(root)
    manifest[key] = {"recipe": recipe, "files": {f.name: _sha256(f) for f in files}}
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(root / MANIFEST)


def _matches(root: Path, key: str, recipe: int) -> bool:
    entry = _read_manifest(root).get(key)
    if not isinstance(entry, dict) or entry.get("recipe") != recipe:
        return False
    files = entry.get("files") or {}
    return bool(files) and all(
        (root / name).is_file() and _sha256(root / name) == digest for name, digest in files.items()
    )


def cached_digits(root: Path | None = None) -> DigitsModels | None:
    root = root or cache_dir()
    return DigitsModels(root) if _matches(root, "digits", DIGITS_RECIPE) else None


def ensure_digits_models(root: Path | None = None) -> DigitsModels:
    """The cached digits models, built first when missing (needs TensorFlow)."""
    root = root or cache_dir()
    models = cached_digits(root)
    if models is not None:
        return models
    if not can_build():
        raise ModelsUnavailableError(
            f"no digits test models in {root}, and TensorFlow and scikit-learn are not both "
            f"installed to build them; run `python scripts/make_test_models.py {root}` where they "
            f"are (or set {CACHE_ENV})"
        )
    return build_digits_models(root)


def ensure_mobilenet_v2_fp16(root: Path | None = None) -> Path:
    root = root or cache_dir()
    path = root / "mobilenet_v2_fp16.tflite"
    if _matches(root, "mobilenet_v2_fp16", MOBILENET_RECIPE):
        return path
    if importlib.util.find_spec("tensorflow") is None:
        raise ModelsUnavailableError(f"no MobileNetV2 in {root} and TensorFlow is not installed")
    return build_mobilenet_v2_fp16(root)


def require(build: Callable[[], Any]) -> Any:
    """Run ``build``; skip the test when models cannot be had (fail under CI, where they must)."""
    import pytest

    try:
        return build()
    except ModelsUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


# -- building (TensorFlow) --------------------------------------------------------------------


def _quiet_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def train_digits_keras_model() -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A small conv net on the 8x8 digits: (model, x_train, y_train, x_test, y_test)."""
    tf = _quiet_tensorflow()
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train = x[:TRAIN_SAMPLES], y[:TRAIN_SAMPLES]
    x_test, y_test = x[TRAIN_SAMPLES:], y[TRAIN_SAMPLES:]
    tf.keras.utils.set_random_seed(SEED)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((64,), name=DIGITS_INPUT),
            tf.keras.layers.Reshape((8, 8, 1)),
            tf.keras.layers.Conv2D(8, 3, activation="relu"),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
    return model, x_train, y_train, x_test, y_test


def convert(model: Any, kind: str, representative: np.ndarray | None = None) -> bytes:
    """TFLite flatbuffer of a Keras model: ``fp32``, ``fp16`` (float16 weights) or ``int8``
    (full integer, int8 input and output)."""
    tf = _quiet_tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if kind == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        assert representative is not None
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([row[None, :]] for row in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif kind != "fp32":
        raise ValueError(f"unknown kind {kind!r}")
    return bytes(converter.convert())


def build_identity_model(path: Path, shape: list[int | None], dtype: str = "float32") -> Path:
    """A TFLite model whose output ``scores`` equals its input ``x`` (``dtype`` of ``shape``;
    ``None`` first makes the batch dimension variable), so a test chooses the scores.

    ``maximum(x, lowest float)`` keeps a real operator between the two: the converter folds a
    plain identity away, leaving the input as the output. Needs TensorFlow."""
    if not can_build():
        raise ModelsUnavailableError("building TFLite models needs TensorFlow")
    tf = _quiet_tensorflow()
    lowest = np.finfo(dtype).min if dtype.startswith("float") else np.iinfo(dtype).min

    class Identity(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec(shape, tf.as_dtype(dtype), name="x")])  # type: ignore[misc]
        def serve(self, x: Any) -> dict[str, Any]:
            return {"scores": tf.maximum(x, tf.constant(lowest, dtype=dtype))}

    module = Identity()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(converter.convert()))
    return path


def build_digits_models(root: Path) -> DigitsModels:
    root.mkdir(parents=True, exist_ok=True)
    model, x_train, _, x_test, y_test = train_digits_keras_model()
    files: list[Path] = []
    for kind in DIGITS_KINDS:
        path = root / f"digits_{kind}.tflite"
        path.write_bytes(convert(model, kind, x_train[:200]))
        files.append(path)
    runtime = first_available_runtime()
    references = {
        kind: run_model_directly(runtime, root / f"digits_{kind}.tflite", x_test)
        for kind in DIGITS_KINDS
    }
    np.savez(root / "digits_data.npz", x=x_test, y=y_test)
    np.savez(root / "digits_reference.npz", **references)  # type: ignore[arg-type]
    (root / "digits_labels.txt").write_text("\n".join(DIGITS_LABELS) + "\n")
    files += [root / "digits_data.npz", root / "digits_reference.npz", root / "digits_labels.txt"]
    _record(root, "digits", DIGITS_RECIPE, files)
    return DigitsModels(root)


def build_mobilenet_v2_fp16(root: Path) -> Path:
    tf = _quiet_tensorflow()
    root.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(SEED)
    model = tf.keras.applications.MobileNetV2(weights=None)
    path = root / "mobilenet_v2_fp16.tflite"
    path.write_bytes(convert(model, "fp16"))
    _record(root, "mobilenet_v2_fp16", MOBILENET_RECIPE, [path])
    return path
