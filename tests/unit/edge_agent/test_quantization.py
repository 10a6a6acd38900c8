from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.runtime import Quantization
from edge_agent.runtime.quantization import dequantize, quantize

INT8 = np.dtype(np.int8)


def _params(scale: float, zero_point: int) -> Quantization:
    return Quantization(scale=scale, zero_point=zero_point, qmin=-128, qmax=127)


@settings(max_examples=200, deadline=None)
@given(
    values=hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(-1.0, 1.0, width=32)),
    scale=st.floats(1 / 512, 1 / 64),
    zero_point=st.integers(-20, 20),
)
def test_round_trip_is_within_half_a_step_inside_the_range(
    values: np.ndarray, scale: float, zero_point: int
) -> None:
    params = _params(scale, zero_point)
    low = (params.qmin - zero_point) * scale
    high = (params.qmax - zero_point) * scale
    inside = values[(values >= low) & (values <= high)]
    back = dequantize(quantize(inside, params, INT8), params)
    assert back.dtype == np.float32
    assert np.all(np.abs(back - inside) <= scale / 2 * 1.0001)


def test_values_outside_the_range_clip() -> None:
    params = _params(0.1, 0)
    q = quantize(np.array([-100.0, 100.0, 0.0], np.float32), params, INT8)
    assert q.tolist() == [-128, 127, 0]


def test_halves_round_away_from_zero_like_tflite() -> None:
    params = _params(1.0, 0)
    q = quantize(np.array([0.5, 1.5, 2.5, -0.5, -2.5], np.float32), params, INT8)
    assert q.tolist() == [1, 2, 3, -1, -3]


def test_dequantize_uses_zero_point_and_scale() -> None:
    params = _params(1 / 256, -128)
    out = dequantize(np.array([-128, 0, 127], np.int8), params)
    np.testing.assert_array_equal(out, np.array([0.0, 0.5, 255 / 256], np.float32))
