"""Lazy imports of the heavy libraries, each failing with what to install, and their versions.

Nothing here imports TensorFlow, tf2onnx, onnx, ONNX Runtime, LiteRT or TensorRT at module
import: ``import converters`` stays light, and a machine without a library can still build the
targets that do not need it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import os
from collections.abc import Iterator
from typing import Any

from .errors import TargetUnavailableError

__all__ = [
    "import_onnx",
    "import_onnxruntime",
    "import_tensorflow",
    "library_versions",
    "quiet_stdout",
]

logger = logging.getLogger(__name__)

CONVERT_EXTRA = "hybrid-inference[convert]"
GPU_EXTRA = "hybrid-inference[gpu]"


def _import(module: str, what: str, install: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TargetUnavailableError(f"{what} is not installed ({exc}); install {install}") from exc


def import_tensorflow() -> Any:
    """TensorFlow with its C++ logging turned down to errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = _import("tensorflow", "TensorFlow", CONVERT_EXTRA)
    tf.get_logger().setLevel("ERROR")
    return tf


def import_onnx() -> Any:
    return _import("onnx", "onnx", CONVERT_EXTRA)


def import_onnxruntime() -> Any:
    return _import("onnxruntime", "ONNX Runtime", "hybrid-inference[hub] (onnxruntime)")


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Keep what converters print (Keras prints export summaries) off stdout, which belongs to
    the caller (``model-convert --json``); it goes to the debug log instead."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        text = buffer.getvalue().strip()
        if text:
            logger.debug("converter output:\n%s", text)


_DISTRIBUTIONS = (
    "hybrid-inference",
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "ai-edge-litert",
    "tflite-runtime",
    "onnx2tf",
    "tensorrt",
    "numpy",
)


def library_versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Versions of the installed distributions that take part in a conversion."""
    found: dict[str, str] = {}
    for name in _DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    found.update(extra or {})
    return found
