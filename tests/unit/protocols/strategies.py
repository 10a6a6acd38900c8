"""Hypothesis strategies for tensors of every wire datatype."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols import Datatype

FIXED = [dt for dt in Datatype if dt not in (Datatype.BYTES, Datatype.BF16)]

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)


@st.composite
def tensors(draw: st.DrawFn, datatype: Datatype) -> np.ndarray[Any, Any]:
    shape = draw(shapes)
    if datatype is Datatype.BYTES:
        size = int(np.prod(shape))
        element = st.one_of(
            st.just(b""),
            st.text(max_size=8).map(lambda s: s.encode("utf-8")),
            st.binary(max_size=8),
        )
        items = draw(st.lists(element, min_size=size, max_size=size))
        out = np.empty(size, dtype=object)
        out[:] = items
        return out.reshape(shape)
    if datatype is Datatype.BF16:
        values = draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32)))
        return values.astype(ml_dtypes.bfloat16)
    return draw(hnp.arrays(datatype.numpy_dtype, shape))


def assert_same(expected: np.ndarray[Any, Any], actual: np.ndarray[Any, Any]) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    if expected.dtype == np.dtype(ml_dtypes.bfloat16):
        expected, actual = expected.astype(np.float32), actual.astype(np.float32)
    if expected.dtype.kind == "f":
        assert np.array_equal(expected, actual, equal_nan=True)
    else:
        assert expected.tolist() == actual.tolist()
