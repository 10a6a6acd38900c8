"""Triton's classification extension, as Triton computes it.

An output asked for with ``parameters.classification = k`` is answered with its top ``k``
classes instead of its scores: BYTES strings ``"<value>:<index>[:<label>]"``, best first.

Shapes follow Triton's server (``src/grpc/infer_handler.cc`` and ``src/http_server.cc``):

- a model whose first dimension is the batch (``max_batch_size > 0``) gets one row per batch
  entry, each entry's remaining dimensions flattened: ``[batch, min(k, elements per entry)]``;
- a model without a batch dimension gets the whole output flattened: ``[min(k, elements)]``.

So a ``[1, 10]`` output with ``k = 2`` is ``[2]`` without a batch dimension and ``[1, 2]`` with
one; a ``[2, 3, 4]`` output is ``[2, 2]`` with a batch dimension (each entry's 12 values ranked).
Ties keep the lower index first. A label is added when the model has one for that index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from .errors import MessageError

__all__ = ["CLASSIFICATION", "classification_counts", "classify", "parse_classification"]

CLASSIFICATION: Final = "classification"
"""The output parameter that asks for classes: ``{"name": ..., "parameters": {"classification": k}}``."""


def parse_classification(output: str, value: object) -> int:
    """The ``k`` asked for ``output``; :class:`MessageError` (400) unless a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MessageError(
            f"output {output!r}: parameters.classification must be a positive integer, "
            f"got {value!r}"
        )
    return value


def classification_counts(outputs: Sequence[Any] | None) -> dict[str, int]:
    """Output name -> ``k`` for every requested output that asks for classes.

    ``outputs`` are OIP request outputs (anything with ``name`` and ``parameters``)."""
    counts: dict[str, int] = {}
    for out in outputs or ():
        parameters: Mapping[str, Any] | None = out.parameters
        if parameters and CLASSIFICATION in parameters:
            counts[out.name] = parse_classification(out.name, parameters[CLASSIFICATION])
    return counts


def classify(
    scores: np.ndarray[Any, Any],
    count: int,
    *,
    batched: bool,
    labels: Sequence[str] = (),
) -> np.ndarray[Any, np.dtype[np.object_]]:
    """Top ``count`` classes of ``scores`` as Triton answers them (see the module docstring).

    ``batched``: the model's first dimension is the batch (Triton's ``max_batch_size > 0``).
    Returns an object array of ``bytes``. :class:`MessageError` for an output that cannot be
    ranked (a scalar, strings, or a batched output without a batch dimension)."""
    if count < 1:
        raise MessageError(f"classification must be a positive integer, got {count}")
    if scores.dtype == np.object_ or scores.dtype.kind in "SUV":
        raise MessageError("classification needs a numeric output, not strings")
    if batched and scores.ndim == 0:
        raise MessageError(
            "classification of a batched model needs an output with a batch dimension"
        )
    rows = scores.reshape(scores.shape[0], -1) if batched else scores.reshape(1, -1)
    k = min(count, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    table = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for c in range(k):
            index = int(order[r, c])
            text = f"{float(rows[r, index]):f}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            table[r, c] = text.encode("utf-8")
    return table if batched else table.reshape(k)
