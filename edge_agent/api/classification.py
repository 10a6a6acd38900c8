"""Triton's classification extension: ask for an output with ``parameters.classification = k`` and
get the top k classes of each row as ``"score:index:label"`` strings (BYTES) instead of scores.
This is what a model's ``labels`` file is for; tritonclient's ``class_count`` asks for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..runtime import Array

__all__ = ["CLASSIFICATION", "classification_count", "classify"]

CLASSIFICATION = "classification"


def classification_count(name: str, value: object) -> int:
    """The ``k`` asked for output ``name``; :class:`InputError` unless a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(
            f"output {name!r}: parameters.classification must be a positive integer, got {value!r}"
        )
    return value


def classify(scores: Array, count: int, labels: Sequence[str]) -> Array:
    """Top ``count`` classes along the last axis, best first, as ``score:index[:label]`` bytes."""
    if scores.ndim == 0:
        raise InputError("classification needs an output with at least one dimension")
    count = min(count, scores.shape[-1])
    order = np.argsort(-scores.astype(np.float64), axis=-1, kind="stable")[..., :count]
    best = np.take_along_axis(scores, order, axis=-1)
    out = np.empty(order.shape, dtype=object)
    for position in np.ndindex(order.shape):
        index = int(order[position])
        text = f"{float(best[position]):f}:{index}"
        if index < len(labels):
            text += f":{labels[index]}"
        out[position] = text.encode("utf-8")
    return out
