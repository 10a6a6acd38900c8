"""How an app asked for its answer: binary or JSON per output, and classes instead of scores.

The local API reads it from the request once (:meth:`ReplyFormat.of`) and encodes every answer
with it. A request queued for the cloud keeps it in the outbox as JSON, with what the router
adds (the model's name, why it went to the cloud, whether the model has a batch dimension), so
``GET /v2/requests/{id}`` answers in the form the original ``POST .../infer`` would have.

The JSON is the outbox's ``reply`` column::

    {"binary": {"*": false, "<output>": true}, "classification": {"<output>": 3},
     "model_name": "m", "fallback_reason": "always", "batched": true}

``"*"`` holds the request's ``binary_data_output``. Rows written before ``batched`` existed read
back as batched: they were ranked per row of a ``[batch, classes]`` output, which is the batched
rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocols import (
    BINARY_DATA,
    BINARY_DATA_OUTPUT,
    InferenceRequest,
    classification_counts,
)

__all__ = ["ReplyFormat"]

_ALL = "*"


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplyFormat:
    binary_default: bool = False
    """The request's ``parameters.binary_data_output``: outputs not in :attr:`binary` get it."""
    binary: Mapping[str, bool] = field(default_factory=dict)
    """Per output, its own ``parameters.binary_data`` (which wins over the default)."""
    classification: Mapping[str, int] = field(default_factory=dict)
    """Output -> ``k``, for outputs asked for with ``parameters.classification``."""
    batched: bool = True
    """The answering model's first dimension is the batch (for classification)."""
    model_name: str = ""
    """The name the app called (set by the router when it queues the request)."""
    fallback_reason: str = ""
    """Why the request went to the cloud (set by the router when it queues the request)."""

    @classmethod
    def of(cls, request: InferenceRequest) -> ReplyFormat:
        """What ``request`` asks for; :class:`protocols.MessageError` (400) for a
        ``classification`` that is not a positive integer."""
        params = request.parameters
        binary: dict[str, bool] = {}
        for output in request.outputs or ():
            if output.parameters and BINARY_DATA in output.parameters:
                binary.setdefault(output.name, output.parameters[BINARY_DATA] is True)
        return cls(
            binary_default=bool(params and params.get(BINARY_DATA_OUTPUT) is True),
            binary=binary,
            classification=classification_counts(request.outputs),
        )

    def wants_binary(self, output: str) -> bool:
        """Whether ``output`` goes back in binary (Triton's rules, as
        :func:`protocols.wants_binary_output`)."""
        return self.binary.get(output, self.binary_default)

    def to_json(self) -> dict[str, Any]:
        return {
            "binary": {_ALL: self.binary_default, **self.binary},
            "classification": dict(self.classification),
            "model_name": self.model_name,
            "fallback_reason": self.fallback_reason,
            "batched": self.batched,
        }

    @classmethod
    def from_json(cls, data: object) -> ReplyFormat:
        """The format stored by :meth:`to_json`, or by the agent before ``batched`` existed;
        missing keys take their defaults."""
        if not isinstance(data, Mapping):
            return cls()
        binary = dict(data.get("binary") or {})
        default = bool(binary.pop(_ALL, False))
        classes = data.get("classification") or {}
        return cls(
            binary_default=default,
            binary={str(name): bool(value) for name, value in binary.items()},
            classification={str(name): int(k) for name, k in classes.items()},
            batched=bool(data.get("batched", True)),
            model_name=str(data.get("model_name", "")),
            fallback_reason=str(data.get("fallback_reason", "")),
        )
