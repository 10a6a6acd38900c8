"""Where a request is answered: here, in the cloud, or later. Every inference goes through here.

Per local model (``models[].fallback``), in this order:

1. ``never``: always here (the default; nothing below applies).
2. The model is not serving here (file missing, failed or still loading): cloud, ``missing``.
3. ``always``: cloud, ``always``.
4. ``latency_budget_s`` set and the expected local wait plus run over it: cloud, ``latency_budget``.
5. Run here. ``on_low_confidence`` and the answer's confidence (max probability, or Sedna's
   normalised entropy score) under ``threshold``: cloud, ``low_confidence``.
6. Otherwise the local answer.

A name that is not a local model but one of ``cloud.remote_models`` goes to the cloud model it
maps to, ``missing``. When the cloud cannot answer (not connected, breaker open, no answer by the
deadline), ``on_cloud_unavailable`` decides: ``local`` answers here marked ``degraded`` (a
remote-only model has nothing local: 503), ``error`` raises (503, or 504 after a deadline),
``queue`` keeps the request in the outbox and returns a :class:`QueuedResult` (HTTP 202).

Every answer carries ``served_by`` and, where the policy wanted the cloud, ``fallback_reason``.
For models that queue, the request id is an idempotency key: a request whose id the outbox knows
is not run again; it gets that request's state or answer.
"""

from __future__ import annotations

import enum
import itertools
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .cloud.calls import CloudCall, CloudResult
from .cloud.outbox import RequestState, StoredRequest
from .confidence import confidence
from .config import FallbackConfig, OnCloudUnavailable, RemoteModelConfig
from .errors import AgentError, CloudTimeoutError, CloudUnavailableError, ModelNotReadyError
from .metrics import UNKNOWN_MODEL, AgentMetrics
from .models import LoadedModel
from .registry import ModelRegistry
from .runtime import Array

__all__ = [
    "Cloud",
    "FallbackReason",
    "QueuedResult",
    "RoutedResult",
    "Router",
    "ServedBy",
]


class ServedBy(str, enum.Enum):
    EDGE = "edge"
    CLOUD = "cloud"


class FallbackReason(str, enum.Enum):
    ALWAYS = "always"
    LOW_CONFIDENCE = "low_confidence"
    MISSING = "missing"
    LATENCY_BUDGET = "latency_budget"
    CLOUD_UNAVAILABLE = "cloud_unavailable"
    """On a degraded answer: the cloud was wanted but out of reach."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutedResult:
    model_name: str
    model_version: str | None
    outputs: dict[str, Array]
    served_by: ServedBy
    fallback_reason: str | None = None
    """Why the policy wanted the cloud; ``cloud_unavailable`` on a degraded answer."""
    degraded: bool = False
    """Answered here although the policy wanted the cloud, which was out of reach."""
    request_id: str | None = None
    """The request id, generated when the caller gave none and the request went to the cloud."""
    cloud_model: str | None = None

    @property
    def parameters(self) -> dict[str, str | bool]:
        """What every answer carries: ``served_by`` and, when set, ``fallback_reason``,
        ``degraded`` and ``cloud_model``."""
        params: dict[str, str | bool] = {"served_by": self.served_by.value}
        if self.fallback_reason is not None:
            params["fallback_reason"] = self.fallback_reason
        if self.degraded:
            params["degraded"] = True
        if self.cloud_model is not None:
            params["cloud_model"] = self.cloud_model
        return params


@dataclass(frozen=True, kw_only=True, slots=True)
class QueuedResult:
    """The request waits in the outbox (or already has its answer there); fetch it by id."""

    request_id: str
    model_name: str
    fallback_reason: str
    stored: StoredRequest = field(repr=False)

    @property
    def answered(self) -> bool:
        return self.stored.state is RequestState.ANSWERED

    @property
    def parameters(self) -> dict[str, str | bool]:
        return {
            "served_by": ServedBy.CLOUD.value,
            "fallback_reason": self.fallback_reason,
            "queued": True,
        }


class Cloud(Protocol):
    """What the router needs of the cloud side (:class:`~edge_agent.cloud.gateway.CloudGateway`)."""

    def infer(self, call: CloudCall) -> CloudResult: ...

    def enqueue(self, call: CloudCall, reply: Mapping[str, Any]) -> StoredRequest: ...

    def lookup(self, request_id: str) -> StoredRequest | None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class _Route:
    """Where a name's requests may go in the cloud, and what to do when it is away."""

    cloud_model: str
    cloud_version: str | None
    deadline_s: float
    on_unavailable: OnCloudUnavailable
    fallback: FallbackConfig | None = None
    """The local model's policy; ``None`` for a remote-only model."""


class Router:
    """Runs requests on the local models or hands them to the cloud, and counts each one."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: AgentMetrics,
        cloud: Cloud | None = None,
        *,
        remote_models: Sequence[RemoteModelConfig] = (),
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._cloud = cloud
        self._id_prefix = uuid.uuid4().hex[:16]
        self._id_counter = itertools.count(1)
        self._routes: dict[str, _Route] = {}
        for name in registry.names:
            config = registry.config(name)
            assert config is not None
            fallback = config.fallback
            if fallback.policy != "never":
                self._routes[name] = _Route(
                    cloud_model=fallback.cloud_model or name,
                    cloud_version=fallback.cloud_version,
                    deadline_s=fallback.deadline_s,
                    on_unavailable=fallback.on_cloud_unavailable,
                    fallback=fallback,
                )
        for remote in remote_models:
            self._routes[remote.name] = _Route(
                cloud_model=remote.cloud_model or remote.name,
                cloud_version=remote.cloud_version,
                deadline_s=remote.deadline_s,
                on_unavailable=remote.on_cloud_unavailable,
            )
        if self._routes and cloud is None:
            raise ValueError("models fall back to the cloud, but the router has no cloud")

    def knows(self, name: str) -> bool:
        """A local model or a remote model (the ``model`` label of the metrics)."""
        return self._registry.knows(name) or name in self._routes

    def infer(
        self,
        model_name: str,
        inputs: Mapping[str, Array],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
        reply: Mapping[str, Any] | None = None,
    ) -> RoutedResult | QueuedResult:
        """Answer one request: numpy in, numpy out (``outputs`` only, when given), with where it
        was served; or a :class:`QueuedResult` when it waits in the outbox.

        ``reply`` is kept with a queued request for whoever answers the app later (the local API
        stores its output format there). Raises :class:`ModelNotFoundError`,
        :class:`ModelNotReadyError`, :class:`InputError`, :class:`UnavailableError` (and its
        cloud subclasses), :class:`CloudTimeoutError`, :class:`CloudRequestError` or
        :class:`InferenceError`; each is counted under its ``kind``.
        """
        start = time.perf_counter()
        route = self._routes.get(model_name)
        try:
            if route is None:
                return self._edge(model_name, inputs, version, outputs, request_id, start)
            return self._route(
                model_name, route, inputs, version, outputs, request_id, reply or {}, start
            )
        except AgentError as exc:
            label = model_name if self.knows(model_name) else UNKNOWN_MODEL
            self._metrics.error(label, exc.kind)
            raise

    def lookup(self, request_id: str) -> StoredRequest | None:
        """A queued request, with its answer once it has one; ``None`` if unknown or expired."""
        return None if self._cloud is None else self._cloud.lookup(request_id)

    # -- paths -------------------------------------------------------------------------------

    def _edge(
        self,
        model_name: str,
        inputs: Mapping[str, Array],
        version: str | None,
        outputs: Sequence[str] | None,
        request_id: str | None,
        start: float,
    ) -> RoutedResult:
        model = self._registry.get(model_name, version)
        results = model.infer(inputs, outputs)
        bound = self._metrics.model(model.name)
        bound.inference_edge.observe(time.perf_counter() - start)
        bound.requests_edge.inc()
        return RoutedResult(
            model_name=model.name,
            model_version=model.version,
            outputs=results,
            served_by=ServedBy.EDGE,
            request_id=request_id,
        )

    def _route(
        self,
        model_name: str,
        route: _Route,
        inputs: Mapping[str, Array],
        version: str | None,
        outputs: Sequence[str] | None,
        request_id: str | None,
        reply: Mapping[str, Any],
        start: float,
    ) -> RoutedResult | QueuedResult:
        cloud = self._cloud
        assert cloud is not None  # checked in __init__
        if route.on_unavailable == "queue" and request_id:
            stored = cloud.lookup(request_id)
            if stored is not None:  # the same request again: its state, not a second run
                return QueuedResult(
                    request_id=request_id,
                    model_name=model_name,
                    fallback_reason=str(stored.reply.get("fallback_reason", "")),
                    stored=stored,
                )
        model, reason, local = self._decide(model_name, route, inputs, version, outputs)
        if reason is None:
            assert model is not None
            assert local is not None
            return self._answer_here(model, local, outputs, request_id, start)
        self._metrics.fallback(model_name, reason.value).inc()
        request_id = request_id or f"{self._id_prefix}-{next(self._id_counter):x}"
        call = CloudCall(
            request_id=request_id,
            model=route.cloud_model,
            version=(version or route.cloud_version)
            if route.fallback is None
            else route.cloud_version,
            inputs=inputs,
            outputs=outputs,
            deadline_s=route.deadline_s,
        )
        try:
            result = cloud.infer(call)
        except (CloudUnavailableError, CloudTimeoutError) as exc:
            return self._cloud_away(
                exc, model_name, route, call, reason, model, local, outputs, reply, start
            )
        bound = self._metrics.model(model_name)
        bound.inference_cloud.observe(time.perf_counter() - start)
        bound.requests_cloud.inc()
        return RoutedResult(
            model_name=model_name,
            model_version=result.model_version,
            outputs=result.outputs,
            served_by=ServedBy.CLOUD,
            fallback_reason=reason.value,
            request_id=request_id,
            cloud_model=route.cloud_model,
        )

    def _decide(
        self,
        model_name: str,
        route: _Route,
        inputs: Mapping[str, Array],
        version: str | None,
        outputs: Sequence[str] | None,
    ) -> tuple[LoadedModel | None, FallbackReason | None, dict[str, Array] | None]:
        """The local model (if serving), why the request should go to the cloud (``None``: it
        should not), and the local outputs when it was run here."""
        fallback = route.fallback
        if fallback is None:
            return None, FallbackReason.MISSING, None
        try:
            model = self._registry.get(model_name, version)
        except ModelNotReadyError:
            return None, FallbackReason.MISSING, None
        if fallback.policy == "always":
            model.check(inputs, outputs)
            return model, FallbackReason.ALWAYS, None
        if fallback.latency_budget_s is not None and (
            model.expected_latency_s() > fallback.latency_budget_s
        ):
            model.check(inputs, outputs)
            return model, FallbackReason.LATENCY_BUDGET, None
        if fallback.policy != "on_low_confidence":
            return model, None, model.infer(inputs, outputs)
        scored = fallback.confidence_output or model.output_names[0]
        if outputs is not None:
            model.check(inputs, outputs)
        local = model.infer(inputs)
        score = confidence(local[scored], fallback.confidence, softmax=fallback.softmax)
        if outputs is not None:
            local = {name: local[name] for name in outputs}
        if score < fallback.threshold:
            return model, FallbackReason.LOW_CONFIDENCE, local
        return model, None, local

    def _answer_here(
        self,
        model: LoadedModel,
        outputs_by_name: dict[str, Array],
        wanted: Sequence[str] | None,
        request_id: str | None,
        start: float,
        *,
        degraded: bool = False,
    ) -> RoutedResult:
        bound = self._metrics.model(model.name)
        bound.inference_edge.observe(time.perf_counter() - start)
        bound.requests_edge.inc()
        if degraded:
            bound.degraded.inc()
        return RoutedResult(
            model_name=model.name,
            model_version=model.version,
            outputs=outputs_by_name,
            served_by=ServedBy.EDGE,
            fallback_reason=FallbackReason.CLOUD_UNAVAILABLE.value if degraded else None,
            degraded=degraded,
            request_id=request_id,
        )

    def _cloud_away(
        self,
        exc: CloudUnavailableError | CloudTimeoutError,
        model_name: str,
        route: _Route,
        call: CloudCall,
        reason: FallbackReason,
        model: LoadedModel | None,
        local: dict[str, Array] | None,
        outputs: Sequence[str] | None,
        reply: Mapping[str, Any],
        start: float,
    ) -> RoutedResult | QueuedResult:
        if route.on_unavailable == "local" and model is not None:
            if local is None:
                local = model.infer(call.inputs, outputs)
            return self._answer_here(model, local, outputs, call.request_id, start, degraded=True)
        if route.on_unavailable == "queue":
            cloud = self._cloud
            assert cloud is not None
            stored = cloud.enqueue(
                call, {**reply, "model_name": model_name, "fallback_reason": reason.value}
            )
            self._metrics.model(model_name).queued.inc()
            return QueuedResult(
                request_id=call.request_id,
                model_name=model_name,
                fallback_reason=reason.value,
                stored=stored,
            )
        if route.on_unavailable == "local":  # nothing here can answer it
            raise type(exc)(f"{exc}; model {model_name!r} is not on this device") from exc
        raise exc
