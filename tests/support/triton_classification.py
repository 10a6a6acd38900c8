"""Triton's classification extension, written from Triton's documentation ("Classification
Extension") and its server's source (``src/classification.cc``, ``src/http_server.cc``), apart
from :mod:`protocols`, so tests can hold the hub and the agent against it.

What Triton does with ``parameters.classification = k`` on an output:

- the batch size is the output's first dimension when the model batches
  (``max_batch_size > 0``) and the output has dimensions; otherwise there is none;
- each batch entry (or, without a batch, the whole output) is one run of values; its indices
  are sorted by value, highest first, and the first ``min(k, len(run))`` are kept;
- each kept index becomes ``"<value>:<index>"``, plus ``":<label>"`` when the model has a label
  for it; the value is printed by C++'s ``std::to_string`` for the output's type: integers in
  decimal, FP32 and FP64 as ``printf("%f")``;
- the output becomes BYTES, shape ``[batch, min(k, run)]`` or ``[min(k, run)]``;
- only UINT8..UINT64, INT8..INT64, FP32 and FP64 can be ranked; any other type is refused.

Triton's sort is not stable; ties here keep the lower index first (tests choose distinct values).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["RANKED_TYPES", "triton_classification"]

RANKED_TYPES = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64"}
)


def _to_string(value: float | int, datatype: str) -> str:
    if datatype.startswith(("INT", "UINT")):
        return str(int(value))
    return format(float(value), "f")  # std::to_string(float / double): printf("%f")


def triton_classification(
    data: Sequence[float | int],
    shape: Sequence[int],
    datatype: str,
    k: int,
    *,
    batched: bool,
    labels: Sequence[str] = (),
) -> tuple[list[int], list[str]]:
    """``(shape, data)`` of the BYTES output Triton answers for an output of ``shape`` whose
    values, in row-major order, are ``data``."""
    if datatype not in RANKED_TYPES:
        raise ValueError(
            f"class result not available for output due to unsupported type {datatype!r}"
        )
    batch_size = shape[0] if batched and len(shape) > 0 else 0
    per_entry = 1
    for dim in shape[1:] if batch_size else shape:
        per_entry *= dim
    strings: list[str] = []
    for entry in range(max(1, batch_size)):
        run = list(data[entry * per_entry : (entry + 1) * per_entry])
        order = sorted(range(len(run)), key=lambda i: run[i], reverse=True)
        for index in order[: min(k, len(run))]:
            text = f"{_to_string(run[index], datatype)}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            strings.append(text)
    count = min(k, per_entry)
    return ([batch_size, count] if batch_size else [count]), strings
