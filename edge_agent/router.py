"""Where a request is answered. Every inference, from HTTP or in-process, goes through here.

Today every request runs on the local model. The cloud fallback plugs in at
:meth:`Router.infer`: it may send the same request to the hub over MQTT and return a
:class:`RoutedResult` with ``served_by=ServedBy.CLOUD`` and a ``fallback_reason``; the local API
passes :attr:`RoutedResult.parameters` to the caller unchanged, so nothing above the router changes.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import (
    AgentError,
    InputError,
    ModelNotFoundError,
    ModelNotReadyError,
    UnavailableError,
)
from .metrics import UNKNOWN_MODEL, AgentMetrics
from .registry import ModelRegistry
from .runtime import Array

__all__ = ["RoutedResult", "Router", "ServedBy", "error_kind"]


class ServedBy(str, enum.Enum):
    EDGE = "edge"
    CLOUD = "cloud"


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutedResult:
    model_name: str
    model_version: str
    outputs: dict[str, Array]
    served_by: ServedBy
    fallback_reason: str | None = None
    """Why a request went to the cloud (set by the fallback only)."""

    @property
    def parameters(self) -> dict[str, str]:
        """What every answer carries: ``served_by`` and, when set, ``fallback_reason``."""
        params = {"served_by": self.served_by.value}
        if self.fallback_reason is not None:
            params["fallback_reason"] = self.fallback_reason
        return params


def error_kind(exc: BaseException) -> str:
    """The ``error`` label of ``edge_agent_request_errors_total`` for an exception."""
    if isinstance(exc, ModelNotFoundError):
        return "not_found"
    if isinstance(exc, ModelNotReadyError):
        return "not_ready"
    if isinstance(exc, UnavailableError):
        return "unavailable"
    if isinstance(exc, InputError):
        return "bad_input"
    return "inference"


class Router:
    """Runs requests on the local models and counts each one."""

    def __init__(self, registry: ModelRegistry, metrics: AgentMetrics) -> None:
        self._registry = registry
        self._metrics = metrics

    def infer(
        self,
        model_name: str,
        inputs: Mapping[str, Array],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
    ) -> RoutedResult:
        """Answer one request: numpy in, numpy out (``outputs`` only, when given), with where it
        was served.

        Raises :class:`ModelNotFoundError`, :class:`ModelNotReadyError`, :class:`InputError`,
        :class:`UnavailableError` or :class:`InferenceError`.
        """
        start = time.perf_counter()
        try:
            model = self._registry.get(model_name, version)
            results = model.infer(inputs, outputs)
        except AgentError as exc:
            label = model_name if self._registry.knows(model_name) else UNKNOWN_MODEL
            self._metrics.error(label, error_kind(exc))
            raise
        bound = self._metrics.model(model.name)
        bound.inference_edge.observe(time.perf_counter() - start)
        bound.requests_edge.inc()
        return RoutedResult(
            model_name=model.name,
            model_version=model.version,
            outputs=results,
            served_by=ServedBy.EDGE,
        )
