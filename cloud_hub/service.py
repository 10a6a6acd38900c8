"""Inference as the transports share it: decoded request in, outputs (or an error) out.

HTTP (:mod:`cloud_hub.fastpath`) and MQTT both decode with :mod:`protocols`, then call
:meth:`InferenceService.run`, which finds the model version, applies the request's options
(requested outputs, Triton's ``timeout`` and ``classification`` parameters) and runs it through
the version's batcher. A model that captures (:mod:`cloud_hub.capture`) keeps the fallback
requests it answers, with their answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from protocols import (
    DecodedRequest,
    EncodedBody,
    Limits,
    MessageError,
    classification_counts,
    classify,
    decode_request,
    encode_response,
    wants_binary_output,
)

from .errors import BadRequestError
from .repository import LoadedVersion, ModelRepository

if TYPE_CHECKING:
    from .capture import Capture

__all__ = ["SERVED_BY", "InferenceService"]

SERVED_BY = "cloud"

Arrays = dict[str, np.ndarray[Any, Any]]
_T = TypeVar("_T")


class InferenceService:
    def __init__(
        self, repository: ModelRepository, limits: Limits, *, capture: Capture | None = None
    ) -> None:
        self.repository = repository
        self.limits = limits
        self.capture = capture

    async def run(
        self,
        model: str,
        version: str | None,
        decoded: DecodedRequest,
        *,
        timeout_s: float | None = None,
        device_id: str | None = None,
    ) -> tuple[LoadedVersion, Arrays]:
        """Run a decoded request; ``timeout_s`` (a transport's deadline) tightens the request's own.
        ``device_id``: the authenticated device (MQTT's topic), which capture records."""
        loaded = self.repository.get(model, version)
        request = decoded.request
        wanted = [o.name for o in request.outputs or []]
        own = _timeout_s(request.parameters or {})
        if own is None or (timeout_s is not None and timeout_s < own):
            own = timeout_s
        counts = _hub_errors(classification_counts, request.outputs)
        capture, config = self.capture, loaded.config.capture
        report = None if capture is None else capture.inspect(config, request)
        result = await loaded.infer(decoded.tensors, outputs=wanted, timeout_s=own)
        if report is not None and capture is not None and config is not None:
            capture.record(
                model=loaded.model,
                model_version=str(loaded.version),
                config=config,
                batched=loaded.config.max_batch_size > 0,
                decoded=decoded,
                outputs=result,
                report=report,
                device_id=device_id,
            )
        return loaded, _classify(loaded, counts, result)

    async def infer_http(
        self, model: str, version: str | None, body: bytes, header_length: str | None
    ) -> EncodedBody:
        """Decode an HTTP body, run it, and encode the answer as the caller asked."""
        decoded = decode_request(body, header_length, limits=self.limits)
        loaded, result = await self.run(model, version, decoded)
        request = decoded.request
        return encode_response(
            result,
            model_name=model,
            model_version=str(loaded.version),
            id=request.id,
            parameters={"served_by": SERVED_BY},
            binary={name: wants_binary_output(request, name) for name in result},
        )


def _timeout_s(parameters: dict[str, Any]) -> float | None:
    """Triton's per-request ``timeout`` parameter, in microseconds."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequestError(
            f"parameters.timeout must be a non-negative integer of microseconds, got {value!r}"
        )
    return value / 1e6 or None


def _classify(loaded: LoadedVersion, counts: dict[str, int], result: Arrays) -> Arrays:
    """Triton's classification extension (:func:`protocols.classify`): an output asked for with
    ``parameters.classification: k`` is answered with its top ``k`` classes, ranked per batch
    entry when the model has a batch dimension."""
    batched = loaded.config.max_batch_size > 0
    labels = loaded.labels or ()
    for name, count in counts.items():
        if name in result:
            result[name] = _hub_errors(
                classify, result[name], count, batched=batched, labels=labels, output=name
            )
    return result


def _hub_errors(function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call a rule of :mod:`protocols`, answering its refusal as the hub's own 400, so both
    transports handle it like every other bad request."""
    try:
        return function(*args, **kwargs)
    except MessageError as exc:
        raise BadRequestError(str(exc)) from exc
