"""Choosing the interpreter: the one asked for, or the lightest one installed.

Nothing here imports an interpreter package until it is tried, so a device with LiteRT never pays
for TensorFlow's import, and the choice is made once per process.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from ..errors import RuntimeUnavailableError
from .base import RUNTIME_ORDER, RUNTIMES, Backend, RuntimeChoice, RuntimeName
from .interpreter import InterpreterBackend

__all__ = ["RuntimeInfo", "backend_class", "select_runtime"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeInfo:
    """The runtime in use, reported in status and metrics."""

    name: RuntimeName
    version: str
    backend_class: type[InterpreterBackend]

    def new_backend(self) -> Backend:
        return self.backend_class()


def backend_class(name: RuntimeName) -> type[InterpreterBackend]:
    """The backend class registered for ``name`` in :data:`RUNTIMES`."""
    module_name, _, attr = RUNTIMES[name].partition(":")
    cls: type[InterpreterBackend] = getattr(importlib.import_module(module_name), attr)
    return cls


def select_runtime(choice: RuntimeChoice = "auto") -> RuntimeInfo:
    """The runtime named by ``choice``, or with ``"auto"`` the first of :data:`RUNTIME_ORDER`
    that imports. :class:`RuntimeUnavailableError` says why each candidate failed."""
    candidates = RUNTIME_ORDER if choice == "auto" else (choice,)
    reasons: list[str] = []
    for name in candidates:
        cls = backend_class(name)
        try:
            version = cls.probe()
        except RuntimeUnavailableError as exc:
            logger.debug("runtime %s is not usable: %s", name, exc)
            reasons.append(str(exc))
            continue
        logger.info("using runtime %s %s", name, version)
        return RuntimeInfo(name=name, version=version, backend_class=cls)
    raise RuntimeUnavailableError(
        "no TFLite interpreter can be imported ("
        + "; ".join(reasons)
        + "); install ai-edge-litert (pip install 'hybrid-inference[edge]') or tflite-runtime"
    )
