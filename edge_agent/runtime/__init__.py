"""Interpreter backends: one module per runtime behind :class:`~.base.Backend`.

    base.py             the Backend protocol, tensor specs, the runtime name -> class map
    interpreter.py      the Interpreter-API backend the three runtimes share
    litert.py           ai_edge_litert (first choice)
    tflite.py           tflite_runtime
    tensorflow_lite.py  tensorflow.lite (last resort)
    select.py           which runtime this process uses
    quantization.py     float <-> int8/uint8 for full-integer models

Interpreter packages are imported only by :func:`select_runtime`, never at import time.
"""

from .base import (
    RUNTIME_ORDER,
    RUNTIMES,
    Array,
    Backend,
    ModelSignature,
    Quantization,
    RuntimeChoice,
    RuntimeName,
    TensorSpec,
)
from .select import RuntimeInfo, backend_class, select_runtime

__all__ = [
    "RUNTIMES",
    "RUNTIME_ORDER",
    "Array",
    "Backend",
    "ModelSignature",
    "Quantization",
    "RuntimeChoice",
    "RuntimeInfo",
    "RuntimeName",
    "TensorSpec",
    "backend_class",
    "select_runtime",
]
