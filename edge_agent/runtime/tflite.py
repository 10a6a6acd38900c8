"""The older ``tflite-runtime`` wheel: still the only LiteRT build on some boards (numpy < 2)."""

from __future__ import annotations

from importlib import metadata
from typing import Any, ClassVar

from .base import RuntimeName
from .interpreter import InterpreterBackend

__all__ = ["TFLiteRuntimeBackend"]


class TFLiteRuntimeBackend(InterpreterBackend):
    runtime: ClassVar[RuntimeName] = "tflite_runtime"

    @classmethod
    def interpreter_class(cls) -> Any:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter

    @classmethod
    def runtime_version(cls) -> str:
        return metadata.version("tflite-runtime")
