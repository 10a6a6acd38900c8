"""Is a new model fit to serve? The smoke test before the swap, the health window after it.

The smoke test runs the release's sample inputs and compares the outputs with the ones it
carries (``atol + rtol * |expected|``). The health window watches the model while it serves:
every request it runs (and the smoke samples again, every ``interval_s``, so a quiet device is
watched too). It fails on the first interpreter error, on the first NaN or infinite output, or
when the median run time of at least three runs is over the latency budget.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protocols import SmokeTensor, SmokeTest

from ..errors import AgentError
from ..models import LoadedModel
from ..runtime import Array
from .verify import Reason, RejectedError

__all__ = ["HealthWatch", "Verdict", "run_smoke_test"]

MIN_RUNS_FOR_LATENCY = 3


def _array(tensor: SmokeTensor) -> Array:
    return np.asarray(tensor.data, dtype=tensor.datatype.numpy_dtype).reshape(tensor.shape)


def _finite(outputs: Mapping[str, Array]) -> bool:
    return all(np.isfinite(value).all() for value in outputs.values() if value.dtype.kind in "fc")


def run_smoke_test(model: LoadedModel, smoke: SmokeTest | None) -> None:
    """:class:`RejectedError` (smoke_test) unless every sample gives its expected outputs.
    Without a smoke test the model still had its warm-up run when it loaded."""
    if smoke is None:
        return
    for index, sample in enumerate(smoke.samples):
        inputs = {name: _array(tensor) for name, tensor in sample.inputs.items()}
        try:
            got = model.infer(inputs)
        except AgentError as exc:
            raise RejectedError(Reason.SMOKE_TEST, f"sample {index} failed to run: {exc}") from exc
        for name, tensor in sample.outputs.items():
            if name not in got:
                raise RejectedError(Reason.SMOKE_TEST, f"sample {index}: no output {name!r}")
            value = np.asarray(got[name], dtype=np.float64)
            expected = _array(tensor).astype(np.float64)
            if value.shape != expected.shape:
                raise RejectedError(
                    Reason.SMOKE_TEST,
                    f"sample {index}: output {name!r} has shape {list(value.shape)}, "
                    f"expected {list(expected.shape)}",
                )
            if not np.isfinite(value).all():
                raise RejectedError(Reason.SMOKE_TEST, f"sample {index}: {name!r} is not finite")
            if not np.allclose(value, expected, atol=smoke.atol, rtol=smoke.rtol):
                worst = float(np.max(np.abs(value - expected)))
                raise RejectedError(
                    Reason.SMOKE_TEST,
                    f"sample {index}: output {name!r} is off by up to {worst:.6g} "
                    f"(atol {smoke.atol:g}, rtol {smoke.rtol:g})",
                )


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    healthy: bool
    reason: str | None = None
    runs: int = 0


class HealthWatch:
    """Collects what a model does while it is watched; ``LoadedModel`` calls ``observe`` and
    ``error`` from request threads, so both are cheap and thread-safe."""

    def __init__(self, *, latency_budget_s: float | None) -> None:
        self._budget_s = latency_budget_s
        self._lock = threading.Lock()
        self._run_s: list[float] = []
        self._errors = 0
        self._first_error: str | None = None
        self._nan = 0

    def observe(self, run_s: float, outputs: Mapping[str, Array]) -> None:
        finite = _finite(outputs)
        with self._lock:
            self._run_s.append(run_s)
            if not finite:
                self._nan += 1

    def error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors += 1
            if self._first_error is None:
                self._first_error = str(exc)

    def verdict(self) -> Verdict:
        with self._lock:
            runs = len(self._run_s)
            if self._errors:
                return Verdict(
                    healthy=False,
                    reason=f"{self._errors} run(s) failed, first: {self._first_error}",
                    runs=runs,
                )
            if self._nan:
                return Verdict(
                    healthy=False,
                    reason=f"{self._nan} run(s) gave NaN or infinite outputs",
                    runs=runs,
                )
            if self._budget_s is not None and runs >= MIN_RUNS_FOR_LATENCY:
                median_s = statistics.median(self._run_s)
                if median_s > self._budget_s:
                    return Verdict(
                        healthy=False,
                        reason=f"median run time {median_s * 1000:.3f} ms over the budget of "
                        f"{self._budget_s * 1000:.3f} ms ({runs} runs)",
                        runs=runs,
                    )
            return Verdict(healthy=True, runs=runs)
