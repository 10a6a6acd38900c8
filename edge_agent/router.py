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

Every answer carries ``served_by`` and, where the policy wanted the cloud, ``fallback_reason``,
and says whether its model's first dimension is the batch (``batched``, for the classification
extension): a local model's signature decides, also for the cloud's answers in its place (a
model not serving here counts as batched); a remote model's ``batched`` setting decides for it.
For models that queue, the request id is an idempotency key: a request whose id the outbox knows
is not run again; it gets that request's state or answer.

A request that may go to the cloud becomes one :class:`InferCall` when it arrives, and that
value goes from step to step; one for a model without a fallback policy goes straight to it.
"""

from __future__ import annotations

import enum
import itertools
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from .cloud.calls import CloudCall, CloudResult, QueuedCall
from .confidence import as_probabilities, row_confidences
from .config import FallbackConfig, OnCloudUnavailable, RemoteModelConfig
from .errors import AgentError, CloudTimeoutError, CloudUnavailableError, ModelNotReadyError
from .metrics import UNKNOWN_MODEL, AgentMetrics
from .models import LoadedModel
from .registry import ModelRegistry
from .reply import ReplyFormat
from .runtime import Array

__all__ = [
    "Cloud",
    "FallbackReason",
    "InferCall",
    "QueuedResult",
    "RoutedResult",
    "Router",
    "ServedBy",
]


_NO_FORMAT = ReplyFormat()
"""The defaults, for callers that say nothing of the answer's form (shared: it is frozen)."""


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
class InferCall:
    """One request, as the router takes it; built once when it arrives."""

    model: str
    """The name the app called: a local model or a remote one."""
    inputs: Mapping[str, Array]
    version: str | None = None
    outputs: Sequence[str] | None = None
    """The outputs wanted; ``None``: all."""
    request_id: str | None = None
    reply: ReplyFormat = field(default_factory=ReplyFormat)
    """Kept with the request if it is queued, for whoever answers the app later."""
    start_s: float
    """``time.perf_counter()`` on arrival; the latency metrics count from here."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutedResult:
    model_name: str
    model_version: str | None
    outputs: dict[str, Array]
    served_by: ServedBy
    batched: bool
    """The model's first dimension is the batch (classification ranks each entry on its own)."""
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
    queued: QueuedCall = field(repr=False)

    @property
    def answered(self) -> bool:
        return self.queued.answered

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

    def enqueue(self, call: CloudCall, reply: ReplyFormat) -> QueuedCall: ...

    def lookup(self, request_id: str) -> QueuedCall | None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class _Route:
    """Where a name's requests may go in the cloud, and what to do when it is away."""

    cloud_model: str
    cloud_version: str | None
    deadline_s: float
    on_unavailable: OnCloudUnavailable
    fallback: FallbackConfig | None = None
    """The local model's policy; ``None`` for a remote-only model."""
    batched: bool = True
    """For answers with no local model to go by: a remote model's setting; a local model that
    is not serving counts as batched."""

    def batched_for(self, model: LoadedModel | None) -> bool:
        """Whether a cloud answer for this name has a batch dimension: the local model's rule
        when it serves (the cloud answers the same request), else :attr:`batched`."""
        return self.batched if model is None else model.batched


@dataclass(frozen=True, kw_only=True, slots=True)
class _Decision:
    """What the policy made of a request that has a route to the cloud."""

    reason: FallbackReason | None
    """Why it should go to the cloud; ``None``: answer here."""
    model: LoadedModel | None = None
    """The local model, when it serves."""
    local: dict[str, Array] | None = None
    """The local outputs, when it was run here."""
    top_class: tuple[int, ...] | None = None
    """Per row, the local model's top class, when a low confidence handed it over."""
    row_confidence: tuple[float, ...] | None = None
    """Per row, the confidence the policy compared, likewise."""


class Router:
    """Runs requests on the local models or hands them to the cloud, and counts each one."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: AgentMetrics,
        cloud: Cloud | None = None,
        *,
        remote_models: Sequence[RemoteModelConfig] = (),
        device_parameters: Mapping[str, str | bool] | None = None,
    ) -> None:
        """``device_parameters`` go with every request handed to the cloud (the device class,
        and ``capture: false`` for a device that opted out of capture)."""
        self._registry = registry
        self._device_parameters = dict(device_parameters or {})
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
                batched=remote.batched,
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
        reply: ReplyFormat | None = None,
    ) -> RoutedResult | QueuedResult:
        """Answer one request: numpy in, numpy out (``outputs`` only, when given), with where it
        was served; or a :class:`QueuedResult` when it waits in the outbox.

        ``reply`` is kept with a queued request for whoever answers the app later (the local API
        says there how its app wants the answer). Raises :class:`ModelNotFoundError`,
        :class:`ModelNotReadyError`, :class:`InputError`, :class:`UnavailableError` (and its
        cloud subclasses), :class:`CloudTimeoutError`, :class:`CloudRequestError` or
        :class:`InferenceError`; each is counted under its ``kind``.
        """
        start_s = time.perf_counter()
        route = self._routes.get(model_name)
        try:
            if route is None:  # no fallback: straight to the model (the hot path, kept lean)
                model = self._registry.get(model_name, version)
                results = model.infer(inputs, outputs)
                return self._here(model, results, start_s=start_s, request_id=request_id)
            call = InferCall(
                model=model_name,
                inputs=inputs,
                version=version,
                outputs=outputs,
                request_id=request_id,
                reply=reply or _NO_FORMAT,
                start_s=start_s,
            )
            return self._route(call, route)
        except AgentError as exc:
            label = model_name if self.knows(model_name) else UNKNOWN_MODEL
            self._metrics.error(label, exc.kind)
            raise

    def lookup(self, request_id: str) -> QueuedCall | None:
        """A queued request, with its answer once it has one; ``None`` if unknown or expired."""
        return None if self._cloud is None else self._cloud.lookup(request_id)

    # -- paths -------------------------------------------------------------------------------

    def _route(self, call: InferCall, route: _Route) -> RoutedResult | QueuedResult:
        cloud = self._cloud
        assert cloud is not None  # checked in __init__
        if route.on_unavailable == "queue" and call.request_id:
            queued = cloud.lookup(call.request_id)
            if queued is not None:  # the same request again: its state, not a second run
                return QueuedResult(
                    request_id=call.request_id,
                    model_name=call.model,
                    fallback_reason=queued.reply.fallback_reason,
                    queued=queued,
                )
        decision = self._decide(call, route)
        if decision.reason is None:
            assert decision.model is not None
            assert decision.local is not None
            return self._here(
                decision.model, decision.local, start_s=call.start_s, request_id=call.request_id
            )
        self._metrics.fallback(call.model, decision.reason.value).inc()
        request_id = call.request_id or f"{self._id_prefix}-{next(self._id_counter):x}"
        cloud_call = CloudCall(
            request_id=request_id,
            model=route.cloud_model,
            version=(call.version or route.cloud_version)
            if route.fallback is None
            else route.cloud_version,
            inputs=call.inputs,
            outputs=call.outputs,
            deadline_s=route.deadline_s,
            parameters=self._report(decision),
        )
        try:
            result = cloud.infer(cloud_call)
        except (CloudUnavailableError, CloudTimeoutError) as exc:
            return self._cloud_away(exc, call, route, cloud_call, decision)
        bound = self._metrics.model(call.model)
        bound.inference_cloud.observe(time.perf_counter() - call.start_s)
        bound.requests_cloud.inc()
        return RoutedResult(
            model_name=call.model,
            model_version=result.model_version,
            outputs=result.outputs,
            served_by=ServedBy.CLOUD,
            batched=route.batched_for(decision.model),
            fallback_reason=decision.reason.value,
            request_id=request_id,
            cloud_model=route.cloud_model,
        )

    def _decide(self, call: InferCall, route: _Route) -> _Decision:
        """Whether the request should go to the cloud, and why; the local model if it serves,
        and its outputs when it was run here."""
        fallback = route.fallback
        if fallback is None:
            return _Decision(reason=FallbackReason.MISSING)
        try:
            model = self._registry.get(call.model, call.version)
        except ModelNotReadyError:
            return _Decision(reason=FallbackReason.MISSING)
        inputs, outputs = call.inputs, call.outputs
        if fallback.policy == "always":
            model.check(inputs, outputs)
            return _Decision(reason=FallbackReason.ALWAYS, model=model)
        if fallback.latency_budget_s is not None and (
            model.expected_latency_s() > fallback.latency_budget_s
        ):
            model.check(inputs, outputs)
            return _Decision(reason=FallbackReason.LATENCY_BUDGET, model=model)
        if fallback.policy != "on_low_confidence":
            return _Decision(reason=None, model=model, local=model.infer(inputs, outputs))
        scored = fallback.confidence_output or model.output_names[0]
        if outputs is not None:
            model.check(inputs, outputs)
        local = model.infer(inputs)
        probabilities = as_probabilities(local[scored], fallback.softmax)
        rows = row_confidences(probabilities, fallback.confidence)
        if outputs is not None:
            local = {name: local[name] for name in outputs}
        if float(rows.min()) < fallback.threshold:
            return _Decision(
                reason=FallbackReason.LOW_CONFIDENCE,
                model=model,
                local=local,
                top_class=tuple(int(c) for c in probabilities.argmax(axis=1)),
                row_confidence=tuple(float(c) for c in rows),
            )
        return _Decision(reason=None, model=model, local=local)

    def _report(self, decision: _Decision) -> dict[str, str | int | float | bool]:
        """The parameters a request handed over carries: why, and what the device answered
        (one value per row; several rows as comma-separated text), for the hub's capture."""
        assert decision.reason is not None
        report: dict[str, str | int | float | bool] = {
            "fallback_reason": decision.reason.value,
            **self._device_parameters,
        }
        if decision.model is not None and decision.model.version is not None:
            report["device_model_version"] = str(decision.model.version)
        top, conf = decision.top_class, decision.row_confidence
        if top is not None and conf is not None:
            if len(top) == 1:
                report["device_top_class"], report["device_confidence"] = top[0], conf[0]
            else:
                report["device_top_class"] = ",".join(str(c) for c in top)
                report["device_confidence"] = ",".join(repr(c) for c in conf)
        return report

    def _here(
        self,
        model: LoadedModel,
        outputs: dict[str, Array],
        *,
        start_s: float,
        request_id: str | None,
        degraded: bool = False,
    ) -> RoutedResult:
        """The answer computed here: counted, and marked degraded when the cloud was wanted."""
        bound = self._metrics.model(model.name)
        bound.inference_edge.observe(time.perf_counter() - start_s)
        bound.requests_edge.inc()
        if degraded:
            bound.degraded.inc()
        return RoutedResult(
            model_name=model.name,
            model_version=model.version,
            outputs=outputs,
            served_by=ServedBy.EDGE,
            batched=model.batched,
            fallback_reason=FallbackReason.CLOUD_UNAVAILABLE.value if degraded else None,
            degraded=degraded,
            request_id=request_id,
        )

    def _cloud_away(
        self,
        exc: CloudUnavailableError | CloudTimeoutError,
        call: InferCall,
        route: _Route,
        cloud_call: CloudCall,
        decision: _Decision,
    ) -> RoutedResult | QueuedResult:
        model, reason = decision.model, decision.reason
        assert reason is not None
        if route.on_unavailable == "local" and model is not None:
            local = decision.local
            if local is None:
                local = model.infer(call.inputs, call.outputs)
            return self._here(
                model,
                local,
                start_s=call.start_s,
                request_id=cloud_call.request_id,
                degraded=True,
            )
        if route.on_unavailable == "queue":
            cloud = self._cloud
            assert cloud is not None
            reply = replace(
                call.reply,
                model_name=call.model,
                fallback_reason=reason.value,
                batched=route.batched_for(model),
            )
            queued = cloud.enqueue(cloud_call, reply)
            self._metrics.model(call.model).queued.inc()
            return QueuedResult(
                request_id=cloud_call.request_id,
                model_name=call.model,
                fallback_reason=reason.value,
                queued=queued,
            )
        if route.on_unavailable == "local":  # nothing here can answer it
            raise type(exc)(f"{exc}; model {call.model!r} is not on this device") from exc
        raise exc
