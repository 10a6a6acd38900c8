"""Tensor descriptions and the layout changes a profile may ask for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

__all__ = [
    "LAYOUT_PERMUTATIONS",
    "Layout",
    "TensorSpec",
    "guess_layout",
    "inverse_permutation",
    "layout_permutations",
    "permute_shape",
]

Layout = Literal["NHWC", "NCHW"]

LAYOUT_PERMUTATIONS: dict[tuple[str, str], tuple[int, ...]] = {
    ("NHWC", "NCHW"): (0, 3, 1, 2),
    ("NCHW", "NHWC"): (0, 2, 3, 1),
}
"""(source layout, artifact layout) -> the axes that turn a source tensor into an artifact's."""

_CHANNELS = (1, 2, 3, 4)
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """A model input or output; ``-1`` marks a variable dimension (the batch, usually)."""

    name: str
    dtype: str
    """numpy dtype name: ``float32``, ``int8``..."""
    shape: tuple[int, ...]
    layout: Layout | None = None

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    def describe(self) -> str:
        dims = ", ".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


def guess_layout(shape: Sequence[int]) -> Layout | None:
    """NHWC or NCHW for a 4-D image tensor whose channel axis is plain (1 to 4 channels at one
    end, a larger spatial size at the other); ``None`` when it cannot be told."""
    if len(shape) != 4:
        return None
    first, last = shape[1], shape[3]
    if last in _CHANNELS and (first < 0 or first > 4):
        return "NHWC"
    if first in _CHANNELS and (last < 0 or last > 4):
        return "NCHW"
    return None


def permute_shape(shape: Sequence[T], perm: Sequence[int]) -> tuple[T, ...]:
    return tuple(shape[axis] for axis in perm)


def inverse_permutation(perm: Sequence[int]) -> tuple[int, ...]:
    inverse = [0] * len(perm)
    for position, axis in enumerate(perm):
        inverse[axis] = position
    return tuple(inverse)


def layout_permutations(
    inputs: Sequence[TensorSpec], wanted: Layout | None
) -> Mapping[str, tuple[int, ...]]:
    """Input name -> the transpose from the source's layout to ``wanted``, for the 4-D inputs
    whose layout differs; empty when nothing changes."""
    if wanted is None:
        return {}
    perms: dict[str, tuple[int, ...]] = {}
    for spec in inputs:
        if spec.layout is not None and spec.layout != wanted:
            perms[spec.name] = LAYOUT_PERMUTATIONS[(spec.layout, wanted)]
    return perms
