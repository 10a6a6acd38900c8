"""The Open Inference Protocol's tensor datatypes and their numpy equivalents.

BF16 maps to ``ml_dtypes.bfloat16``; BYTES maps to numpy ``object`` arrays holding ``bytes``.
Every fixed-size type travels little-endian.
"""

from __future__ import annotations

import enum
from typing import Any

import ml_dtypes
import numpy as np

from .errors import DatatypeError

__all__ = ["Datatype", "datatype_of", "parse_datatype"]


class Datatype(str, enum.Enum):
    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BF16 = "BF16"
    BYTES = "BYTES"

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype (little-endian) that holds this datatype's elements."""
        return _TO_NUMPY[self]

    @property
    def itemsize(self) -> int | None:
        """Bytes per element on the wire; ``None`` for BYTES, whose elements vary."""
        return None if self is Datatype.BYTES else _TO_NUMPY[self].itemsize

    @property
    def is_integer(self) -> bool:
        return self.numpy_dtype.kind in "iu"

    @property
    def is_float(self) -> bool:
        return self in (Datatype.FP16, Datatype.FP32, Datatype.FP64, Datatype.BF16)


_TO_NUMPY: dict[Datatype, np.dtype[Any]] = {
    Datatype.BOOL: np.dtype(np.bool_),
    Datatype.UINT8: np.dtype("<u1"),
    Datatype.UINT16: np.dtype("<u2"),
    Datatype.UINT32: np.dtype("<u4"),
    Datatype.UINT64: np.dtype("<u8"),
    Datatype.INT8: np.dtype("<i1"),
    Datatype.INT16: np.dtype("<i2"),
    Datatype.INT32: np.dtype("<i4"),
    Datatype.INT64: np.dtype("<i8"),
    Datatype.FP16: np.dtype("<f2"),
    Datatype.FP32: np.dtype("<f4"),
    Datatype.FP64: np.dtype("<f8"),
    Datatype.BF16: np.dtype(ml_dtypes.bfloat16),
    Datatype.BYTES: np.dtype(object),
}

_BY_NAME = {dt.value: dt for dt in Datatype}
_FROM_NUMPY = {
    **{dtype: datatype for datatype, dtype in _TO_NUMPY.items() if datatype is not Datatype.BYTES},
    **{
        dtype.newbyteorder("="): datatype
        for datatype, dtype in _TO_NUMPY.items()
        if dtype.kind in "iuf"
    },
}


def parse_datatype(name: object, *, location: str | None = None) -> Datatype:
    """The :class:`Datatype` named ``name``; :class:`DatatypeError` for anything else."""
    if isinstance(name, Datatype):
        return name
    if isinstance(name, str) and name in _BY_NAME:
        return _BY_NAME[name]
    raise DatatypeError(
        f"unknown datatype {name!r}; expected one of {', '.join(_BY_NAME)}", location=location
    )


def datatype_of(dtype: np.dtype[Any] | type, *, location: str | None = None) -> Datatype:
    """The wire datatype of a numpy dtype. Strings and bytes arrays map to BYTES."""
    dt = np.dtype(dtype)
    known = _FROM_NUMPY.get(dt)
    if known is not None:
        return known
    if dt == _TO_NUMPY[Datatype.BF16]:
        return Datatype.BF16
    if dt.kind in "OSU":
        return Datatype.BYTES
    if dt.kind == "b":
        return Datatype.BOOL
    if dt.kind in "iuf" and dt.itemsize in (1, 2, 4, 8):
        prefix = {"i": "INT", "u": "UINT", "f": "FP"}[dt.kind]
        name = f"{prefix}{dt.itemsize * 8}"
        if name in _BY_NAME:
            return _BY_NAME[name]
    raise DatatypeError(
        f"numpy dtype {dt} has no Open Inference Protocol datatype", location=location
    )
