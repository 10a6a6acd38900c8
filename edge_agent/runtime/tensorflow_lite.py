"""``tensorflow.lite``: the last resort, for machines that have full TensorFlow and nothing lighter.

Importing TensorFlow costs seconds and hundreds of MB, which is why it comes last.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

from .base import RuntimeName
from .interpreter import InterpreterBackend

__all__ = ["TensorFlowLiteBackend"]


class TensorFlowLiteBackend(InterpreterBackend):
    runtime: ClassVar[RuntimeName] = "tensorflow"

    @classmethod
    def interpreter_class(cls) -> Any:
        import tensorflow as tf

        return tf.lite.Interpreter

    @classmethod
    def create_interpreter(cls, path: Path, threads: int) -> Any:
        with warnings.catch_warnings():
            # TensorFlow warns that tf.lite.Interpreter moved to LiteRT: that is why it comes last.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            return super().create_interpreter(path, threads)

    @classmethod
    def runtime_version(cls) -> str:
        import tensorflow as tf

        return str(tf.__version__)
