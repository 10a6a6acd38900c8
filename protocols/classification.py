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

Values compare in the output's own type and print as Triton's ``std::to_string`` does: integers
as integers (``7:2``), floating point with six decimals (``0.700000:1``). Triton ranks integer,
FP32 and FP64 outputs; FP16 and BF16 are ranked here too, as floats. BOOL and BYTES outputs are
refused (400), as Triton refuses them. An empty output answers no classes (``[batch, 0]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from .datatypes import Datatype, datatype_of
from .errors import DatatypeError, MessageError

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
    output: str | None = None,
) -> np.ndarray[Any, np.dtype[np.object_]]:
    """Top ``count`` classes of ``scores`` as Triton answers them (see the module docstring).

    ``batched``: the model's first dimension is the batch (Triton's ``max_batch_size > 0``).
    ``output`` names the tensor in error messages. Returns an object array of ``bytes``.
    :class:`MessageError` (400) for an output that cannot be ranked: BOOL or BYTES, or a scalar
    of a batched model."""
    what = f"output {output!r}" if output else "the output"
    if count < 1:
        raise MessageError(f"{what}: classification must be a positive integer, got {count}")
    datatype = _rankable(scores, what)
    if batched and scores.ndim == 0:
        raise MessageError(
            f"{what} is a scalar; classification of a batched model needs its batch dimension"
        )
    if batched:
        rows = scores.reshape(scores.shape[0], math.prod(scores.shape[1:]))
    else:
        rows = scores.reshape(1, scores.size)
    k = min(count, rows.shape[1])
    keys = rows if datatype.is_integer else rows.astype(np.float64)
    table = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for c, index in enumerate(_best_first(keys[r])[:k]):
            value = rows[r, index]
            text = f"{int(value) if datatype.is_integer else f'{float(value):f}'}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            table[r, c] = text.encode("utf-8")
    return table if batched else table.reshape(k)


def _rankable(scores: np.ndarray[Any, Any], what: str) -> Datatype:
    """The output's datatype, if its values can be ranked: integers and floating point."""
    try:
        datatype = datatype_of(scores.dtype)
    except DatatypeError:
        datatype = None
    if datatype is None or datatype in (Datatype.BOOL, Datatype.BYTES):
        name = datatype.value if datatype is not None else str(scores.dtype)
        raise MessageError(
            f"{what} is {name}; classification needs an output of integers or floating point"
        )
    return datatype


def _best_first(values: np.ndarray[Any, Any]) -> list[int]:
    """Indices of a 1-D array from the highest value down; ties keep the lower index first.

    Sorted in the array's own type, so large 64-bit integers and unsigned values compare exactly
    (Triton compares with the output's type too): a stable ascending sort of the reversed array,
    read backwards."""
    last = len(values) - 1
    ascending = np.argsort(values[::-1], kind="stable")
    return [last - int(i) for i in ascending[::-1]]
