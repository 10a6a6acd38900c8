"""Google's LiteRT (``ai-edge-litert``): the successor of tflite-runtime, and the first choice."""

from __future__ import annotations

from importlib import metadata
from typing import Any, ClassVar

from .base import RuntimeName
from .interpreter import InterpreterBackend

__all__ = ["LiteRTBackend"]


class LiteRTBackend(InterpreterBackend):
    runtime: ClassVar[RuntimeName] = "ai_edge_litert"

    @classmethod
    def interpreter_class(cls) -> Any:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter

    @classmethod
    def runtime_version(cls) -> str:
        return metadata.version("ai-edge-litert")
