"""An answer encoded in the form its app asked for: classes instead of scores where asked
(Triton's classification extension, as :func:`protocols.classify` computes it), then binary or
JSON per output. Answers given at once and answers fetched later go through the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from protocols import EncodedBody, classify, encode_response

from ..reply import ReplyFormat
from ..runtime import Array

__all__ = ["encode_answer"]


def encode_answer(
    outputs: Mapping[str, Array],
    *,
    reply: ReplyFormat,
    batched: bool,
    labels: Sequence[str],
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    parameters: Mapping[str, Any],
) -> EncodedBody:
    """The OIP response body. ``batched``: the answering model's first dimension is the batch
    (each entry ranked on its own). :class:`protocols.MessageError` (400) for an output that
    cannot be ranked."""
    if reply.classification:
        outputs = dict(outputs)
        for name, count in reply.classification.items():
            if name in outputs:
                outputs[name] = classify(outputs[name], count, batched=batched, labels=labels)
    return encode_response(
        outputs,
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        parameters=dict(parameters),
        binary={name: reply.wants_binary(name) for name in outputs},
    )
