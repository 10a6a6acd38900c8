"""Feature preprocessing in plain numpy, so the model file stores it as numbers and serving needs
neither scikit-learn nor pickle: standardise, project onto the first principal components when
there are more features than qubits, then scale each component into the feature map's angle
range."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["Preprocessor", "check_features", "fit_preprocessor"]

Array = np.ndarray[Any, np.dtype[np.float64]]

DEFAULT_RANGE = (0.0, math.pi)


@dataclass(frozen=True, kw_only=True)
class Preprocessor:
    mean: Array
    scale: Array
    components: Array | None
    """``[qubits, features]`` principal axes (rows), or ``None`` when no projection is needed."""
    low: Array
    """Per-component minimum on the training set, mapped to ``feature_range[0]``."""
    span: Array
    feature_range: tuple[float, float]

    @property
    def num_inputs(self) -> int:
        return int(self.mean.shape[0])

    @property
    def num_outputs(self) -> int:
        return int(self.low.shape[0])

    def transform(self, features: Array) -> Array:
        """Raw features ``[n, inputs]`` to feature-map angles ``[n, qubits]``."""
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        if self.components is not None:
            x = x @ self.components.T
        lo, hi = self.feature_range
        return lo + (x - self.low) / self.span * (hi - lo)


def fit_preprocessor(
    features: Array, num_qubits: int, *, feature_range: tuple[float, float] = DEFAULT_RANGE
) -> Preprocessor:
    """Fit on the training split only. Constant features keep a scale of 1 instead of dividing by 0."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    z = (x - mean) / scale
    components: Array | None = None
    if z.shape[1] > num_qubits:
        # PCA by SVD of the centred (already standardised, so mean 0) data; signs fixed so the
        # largest loading of each axis is positive, which makes the result reproducible.
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        components = vt[:num_qubits]
        signs = np.sign(components[np.arange(num_qubits), np.abs(components).argmax(axis=1)])
        components = components * signs[:, None]
        z = z @ components.T
    elif z.shape[1] < num_qubits:
        raise ValueError(f"{z.shape[1]} features cannot fill {num_qubits} qubits")
    low = z.min(axis=0)
    span = z.max(axis=0) - low
    span[span < 1e-12] = 1.0
    return Preprocessor(
        mean=mean,
        scale=scale,
        components=components,
        low=low,
        span=span,
        feature_range=(float(feature_range[0]), float(feature_range[1])),
    )


def check_features(features: Any, num_inputs: int) -> Array:
    """A ``[batch, num_inputs]`` float64 array of finite values, or :class:`InputError`."""
    try:
        x = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"features must be numbers: {exc}") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != num_inputs:
        raise InputError(
            f"features have shape {list(x.shape)}; the model takes [batch, {num_inputs}]"
        )
    if x.shape[0] == 0:
        raise InputError("the batch is empty")
    bad = ~np.isfinite(x)
    if bad.any():
        rows = sorted({int(r) for r in np.nonzero(bad)[0]})
        raise InputError(
            f"features must be finite; row(s) {', '.join(map(str, rows[:10]))} hold NaN or infinity"
        )
    return x
