"""How sure a classifier's answer is: the scores the ``on_low_confidence`` policy compares.

Both rules give a score in [0, 1] per row of class scores (the last axis), 1 meaning certain:

- ``max_probability``: the top class's probability.
- ``entropy``: ``1 - H(p) / ln(K)`` for K classes, KubeEdge Sedna's CrossEntropy hard-example
  score (a uniform answer scores 0, a one-hot answer 1).

A request is as sure as its least sure row, since it is answered (or handed over) whole.
Scores that are not probabilities already (logits) go through a softmax first, unless told.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .config import ConfidenceRule

__all__ = ["as_probabilities", "confidence", "row_confidences"]

_SUM_TOLERANCE = 0.05
"""How far from 1 a row of probabilities may sum: an int8 model's dequantized outputs are off by
up to half a quantization step per class (1/512 each for a 1/256 scale)."""


def as_probabilities(
    scores: np.ndarray[Any, Any], softmax: bool | None = None
) -> np.ndarray[Any, Any]:
    """Rows of class probabilities (float64, shape ``(rows, classes)``).

    ``softmax``: ``True`` always applies it, ``False`` never, ``None`` only when some row is not
    a distribution already (a value outside [0, 1] or a sum away from 1).
    """
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] == 0:
        raise ValueError(
            f"class scores need a last axis with at least one class, got {array.shape}"
        )
    rows = array.reshape(-1, array.shape[-1])
    if softmax is None:
        softmax = not (
            bool(np.all((rows >= 0) & (rows <= 1)))
            and bool(np.all(np.abs(rows.sum(axis=1) - 1) <= _SUM_TOLERANCE))
        )
    if softmax:
        shifted = rows - rows.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))
    return rows


def row_confidences(
    probabilities: np.ndarray[Any, Any], rule: ConfidenceRule
) -> np.ndarray[Any, Any]:
    """One score in [0, 1] per row of ``probabilities`` (as :func:`as_probabilities` returns)."""
    if rule == "max_probability":
        return np.asarray(probabilities.max(axis=1))
    classes = probabilities.shape[1]
    if classes < 2:
        return np.ones(probabilities.shape[0])
    p = np.clip(probabilities, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    score = 1.0 + terms.sum(axis=1) / math.log(classes)
    return np.asarray(np.clip(score, 0.0, 1.0))


def confidence(
    scores: np.ndarray[Any, Any], rule: ConfidenceRule, *, softmax: bool | None = None
) -> float:
    """The request's confidence: its least sure row's score."""
    return float(row_confidences(as_probabilities(scores, softmax), rule).min())
