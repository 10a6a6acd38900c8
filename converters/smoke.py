"""Smoke tests: a few inputs and the artifact's own outputs, carried in its manifest.

A device runs a new model on these before it serves it and compares the outputs within the
tolerance (see docs/updates.md). The outputs are the artifact's, not the source's, so the
tolerance only has to cover a different interpreter build or thread count, not conversion error.
Inputs and outputs are in the form the device's runtime takes them: float, in the artifact's
layout, even for integer-quantized models.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from protocols import Precision, SmokeSample, SmokeTensor, SmokeTest, datatype_of
from protocols.manifest import SMOKE_MAX_ELEMENTS

from .runners import ArtifactRunner

__all__ = ["SMOKE_SAMPLES", "TOLERANCE", "make_smoke_test"]

logger = logging.getLogger(__name__)

SMOKE_SAMPLES = 2
TOLERANCE: dict[str, tuple[float, float]] = {
    "fp32": (1e-3, 1e-3),
    "fp16": (1e-2, 1e-2),
    "int8-dynamic": (2e-2, 2e-2),
    "int8": (5e-2, 5e-2),
}
"""(atol, rtol) by precision."""


def _tensor(array: np.ndarray[Any, Any]) -> SmokeTensor | None:
    if array.size > SMOKE_MAX_ELEMENTS or array.size == 0:
        return None
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    data = array.reshape(-1).tolist()
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        return None
    return SmokeTensor(datatype=datatype_of(array.dtype), shape=list(array.shape), data=data)


def make_smoke_test(
    runner: ArtifactRunner,
    feed: Mapping[str, np.ndarray[Any, Any]],
    *,
    precision: Precision,
    count: int = SMOKE_SAMPLES,
) -> SmokeTest | None:
    """Run ``runner`` on the first ``count`` samples of ``feed`` (artifact names and layout), one
    at a time; ``None`` when a tensor is too large to carry or an output is not finite."""
    total = min(len(next(iter(feed.values()))), count) if feed else 0
    samples: list[SmokeSample] = []
    for index in range(total):
        one = {name: np.ascontiguousarray(value[index : index + 1]) for name, value in feed.items()}
        produced = runner.run(one)
        inputs = {name: _tensor(value) for name, value in one.items()}
        outputs = {name: _tensor(np.asarray(value)) for name, value in produced.items()}
        if any(t is None for t in (*inputs.values(), *outputs.values())):
            logger.info("no smoke test in the manifest: a tensor is too large or not finite")
            return None
        samples.append(
            SmokeSample(
                inputs={k: v for k, v in inputs.items() if v is not None},
                outputs={k: v for k, v in outputs.items() if v is not None},
            )
        )
    if not samples:
        return None
    atol, rtol = TOLERANCE.get(precision, (5e-2, 5e-2))
    return SmokeTest(samples=samples, atol=atol, rtol=rtol)
