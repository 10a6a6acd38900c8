"""``tensorflow.lite``: the last resort, for machines that have full TensorFlow and nothing lighter.

Importing TensorFlow costs seconds and hundreds of MB, which is why it comes last.
"""

from __future__ import annotations

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
    def runtime_version(cls) -> str:
        import tensorflow as tf

        return str(tf.__version__)
