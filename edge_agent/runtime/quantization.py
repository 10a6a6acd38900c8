"""Float to and from the integer tensors of full-integer (int8/uint8) models.

Callers always send and receive float: the agent quantizes inputs and dequantizes outputs with
each tensor's own scale and zero point, so an int8 model is a drop-in for its float original.
"""

from __future__ import annotations

import numpy as np

from .base import Array, Quantization

__all__ = ["dequantize", "quantize"]


def quantize(values: Array, params: Quantization, dtype: np.dtype[np.generic]) -> Array:
    """``round(x / scale) + zero_point``, clipped to the type's range.

    Halves round away from zero, as TFLite's own quantize kernel does.
    """
    scaled = values / np.float32(params.scale)
    rounded = np.trunc(scaled + np.copysign(np.float32(0.5), scaled)) + params.zero_point
    result: Array = np.clip(rounded, params.qmin, params.qmax).astype(dtype)
    return result


def dequantize(values: Array, params: Quantization) -> Array:
    """``scale * (q - zero_point)`` as float32."""
    result: Array = (values.astype(np.float32) - np.float32(params.zero_point)) * np.float32(
        params.scale
    )
    return result
