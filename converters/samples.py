"""Sample and calibration data: ``.npz`` files checked against the model's inputs, or generated.

A file holds one array per input, named as the input (``pixels``), each ``[N, ...]`` in the
source model's layout; a model with one input also takes a file with a single array, or one
named ``x``, whatever the input's name. Float inputs take any real numbers, cast to the input's
dtype; integer inputs take integers. Generated data is uniform in [0, 1) (integers in [0, 10)):
fine to check that an artifact computes what its source does, not to calibrate int8 for real
inputs, which is why a build says so when it generates calibration data.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import CalibrationError
from .tensors import TensorSpec

__all__ = ["SampleSet", "generate_samples", "load_samples"]

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True, kw_only=True)
class SampleSet:
    arrays: Arrays
    """Input name -> ``[count, ...]`` array in the source's layout and the input's dtype."""
    origin: Literal["file", "generated"]
    count: int
    sha256: str | None = None
    """Of the file, when read from one."""

    def head(self, count: int) -> SampleSet:
        if count >= self.count:
            return self
        return SampleSet(
            arrays={k: v[:count] for k, v in self.arrays.items()},
            origin=self.origin,
            count=count,
            sha256=self.sha256,
        )

    def batch(self, start: int, stop: int) -> Arrays:
        return {k: v[start:stop] for k, v in self.arrays.items()}


def _pick(arrays: dict[str, Any], spec: TensorSpec, single_input: bool) -> tuple[str, Any] | None:
    if spec.name in arrays:
        return spec.name, arrays[spec.name]
    if single_input:
        if "x" in arrays:
            return "x", arrays["x"]
        if len(arrays) == 1:
            return next(iter(arrays.items()))
    return None


def load_samples(path: Path, inputs: Sequence[TensorSpec], *, what: str) -> SampleSet:
    """Read ``path`` (an ``.npz``) and check it fits ``inputs``; ``what`` names it in errors
    (``"calibration"``, ``"samples"``)."""
    try:
        raw = path.read_bytes()
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise CalibrationError(f"{what} file {path} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(
            f"{what} file {path} is not a readable .npz of arrays: {exc}"
        ) from exc
    chosen: Arrays = {}
    for spec in inputs:
        picked = _pick(arrays, spec, len(inputs) == 1)
        if picked is None:
            raise CalibrationError(
                f"{what} file {path} has no array for input {spec.name!r}; "
                f"it holds {', '.join(sorted(arrays)) or 'nothing'}"
            )
        key, value = picked
        chosen[spec.name] = _checked(value, spec, f"{what} file {path}, array {key!r}")
    counts = {len(v) for v in chosen.values()}
    if len(counts) != 1:
        raise CalibrationError(
            f"{what} file {path}: the arrays hold different numbers of samples "
            f"({', '.join(f'{k}: {len(v)}' for k, v in chosen.items())})"
        )
    count = counts.pop()
    if count == 0:
        raise CalibrationError(f"{what} file {path} holds no samples")
    return SampleSet(
        arrays=chosen, origin="file", count=count, sha256=hashlib.sha256(raw).hexdigest()
    )


def _checked(value: Any, spec: TensorSpec, where: str) -> np.ndarray[Any, Any]:
    array = np.asarray(value)
    expected = "[N, " + ", ".join("?" if d < 0 else str(d) for d in spec.shape[1:]) + "]"
    fits = array.ndim == len(spec.shape) and all(
        want < 0 or have == want for have, want in zip(array.shape[1:], spec.shape[1:], strict=True)
    )
    if not fits:
        raise CalibrationError(
            f"{where} has shape {list(array.shape)}; input {spec.name!r} needs {expected} "
            "(samples first, in the source model's layout)"
        )
    target = spec.numpy_dtype
    if np.issubdtype(target, np.floating):
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise CalibrationError(f"{where} is {array.dtype}; input {spec.name!r} takes numbers")
        array = array.astype(target)
        if not np.isfinite(array).all():
            raise CalibrationError(f"{where} holds NaN or infinite values")
    elif np.issubdtype(target, np.integer) or target == np.bool_:
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise CalibrationError(
                f"{where} is {array.dtype}; input {spec.name!r} takes {target.name}"
            )
        array = array.astype(target)
    else:
        raise CalibrationError(f"input {spec.name!r} is {target.name}, which cannot be sampled")
    return np.ascontiguousarray(array)


def generate_samples(inputs: Sequence[TensorSpec], count: int, *, seed: int = 0) -> SampleSet:
    """``count`` random samples per input (see the module's note on what they are good for)."""
    rng = np.random.default_rng(seed)
    arrays: Arrays = {}
    for spec in inputs:
        if any(d < 0 for d in spec.shape[1:]):
            raise CalibrationError(
                f"input {spec.describe()} has variable dimensions besides the batch, so samples "
                "cannot be generated for it; give --samples and --calibration files"
            )
        shape = (count, *spec.shape[1:])
        dtype = spec.numpy_dtype
        if np.issubdtype(dtype, np.floating):
            arrays[spec.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            arrays[spec.name] = rng.integers(0, 10, shape).astype(dtype)
        elif dtype == np.bool_:
            arrays[spec.name] = rng.random(shape) < 0.5
        else:
            raise CalibrationError(
                f"input {spec.name!r} is {dtype.name}: samples cannot be generated; give files"
            )
    return SampleSet(arrays=arrays, origin="generated", count=count)
