"""Fidelity of an artifact to its source, its host latency, and the gates it must pass.

For every output: max and mean absolute error, RMSE, cosine similarity per sample (mean and
minimum) and, for a classifier's ``[batch, classes]`` output, the share of samples whose top-1
class matches the source's. Gates come from the profile (:attr:`DeviceProfile.thresholds`, the
size limit and the latency limit); a missed gate is one line in the report's ``failures``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols import LatencyReport, OutputFidelity, Thresholds, ValidationReport

from .errors import ConversionError
from .runners import ArtifactRunner
from .samples import SampleSet

__all__ = [
    "LatencyPlan",
    "check_gates",
    "match_names",
    "measure_latency",
    "output_fidelity",
    "validate_runner",
]

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True, kw_only=True)
class LatencyPlan:
    """How long to time an artifact: ``warmup_runs``, then up to ``max_runs`` within
    ``budget_s`` (at least ``min_runs``), one sample per run."""

    warmup_runs: int = 3
    min_runs: int = 5
    max_runs: int = 50
    budget_s: float = 2.0


def match_names(wanted: Sequence[str], available: Sequence[str], what: str) -> dict[str, str]:
    """Source tensor name -> artifact tensor name: by name when every one is there, else by
    position when the counts agree (converters that rename tensors)."""
    if set(wanted) <= set(available):
        return {name: name for name in wanted}
    if len(wanted) == len(available):
        logger.debug("%s names differ (%s vs %s); matching by position", what, wanted, available)
        return dict(zip(wanted, available, strict=True))
    raise ConversionError(
        f"the artifact's {what}s ({', '.join(available)}) do not match the source's "
        f"({', '.join(wanted)})"
    )


def artifact_inputs(
    samples: Mapping[str, np.ndarray[Any, Any]],
    names: Mapping[str, str],
    perms: Mapping[str, tuple[int, ...]],
) -> Arrays:
    """Samples by source input name (source layout) -> by artifact name, in its layout."""
    return {
        names[name]: np.ascontiguousarray(np.transpose(value, perms[name]))
        if name in perms
        else value
        for name, value in samples.items()
    }


def output_fidelity(
    name: str, reference: np.ndarray[Any, Any], candidate: np.ndarray[Any, Any]
) -> tuple[OutputFidelity, list[str]]:
    """The metrics of one output, and problems found on the way (non-finite values)."""
    problems: list[str] = []
    if reference.shape != candidate.shape:
        raise ConversionError(
            f"output {name!r}: the artifact gives shape {list(candidate.shape)}, the source "
            f"{list(reference.shape)}"
        )
    ref = reference.astype(np.float64)
    got = candidate.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(got)))
    if bad:
        problems.append(f"output {name!r}: {bad} values are NaN or infinite")
        got = np.nan_to_num(got, nan=0.0, posinf=0.0, neginf=0.0)
    ref = np.nan_to_num(ref, nan=0.0, posinf=0.0, neginf=0.0)
    diff = np.abs(got - ref)
    count = ref.shape[0] if ref.ndim else 1
    flat_ref = ref.reshape(count, -1)
    flat_got = got.reshape(count, -1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_got, axis=1)
    dots = np.einsum("ij,ij->i", flat_ref, flat_got)
    both_zero = (np.linalg.norm(flat_ref, axis=1) == 0) & (np.linalg.norm(flat_got, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    cosine = np.where(both_zero, 1.0, np.clip(cosine, -1.0, 1.0))
    top1 = None
    if ref.ndim == 2 and ref.shape[1] >= 2:
        top1 = float(np.mean(np.argmax(ref, axis=1) == np.argmax(got, axis=1)))
    fidelity = OutputFidelity(
        name=name,
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        rmse=float(np.sqrt(np.mean((got - ref) ** 2))) if diff.size else 0.0,
        cosine_similarity=float(cosine.mean()) if cosine.size else 1.0,
        cosine_similarity_min=float(cosine.min()) if cosine.size else 1.0,
        top1_agreement=top1,
    )
    return fidelity, problems


def measure_latency(
    runner: ArtifactRunner,
    one: Mapping[str, np.ndarray[Any, Any]],
    *,
    threads: int,
    plan: LatencyPlan,
) -> LatencyReport:
    """Batch-1 latency of ``runner`` on the host."""
    for _ in range(plan.warmup_runs):
        runner.run(one)
    times_s: list[float] = []
    deadline = time.perf_counter() + plan.budget_s
    while len(times_s) < plan.max_runs and (
        len(times_s) < plan.min_runs or time.perf_counter() < deadline
    ):
        start = time.perf_counter()
        runner.run(one)
        times_s.append(time.perf_counter() - start)
    times_ms = np.array(times_s) * 1e3
    return LatencyReport(
        runtime=runner.runtime,
        batch_size=1,
        threads=threads,
        runs=len(times_s),
        p50_ms=float(np.percentile(times_ms, 50)),
        p95_ms=float(np.percentile(times_ms, 95)),
    )


def check_gates(
    thresholds: Thresholds,
    outputs: Sequence[OutputFidelity],
    *,
    size_bytes: int | None = None,
    max_size_bytes: int | None = None,
    latency: LatencyReport | None = None,
    max_latency_ms: float | None = None,
) -> list[str]:
    """One readable line per missed gate."""
    failures: list[str] = []
    for out in outputs:
        where = f"output {out.name!r}"
        if (
            thresholds.min_cosine_similarity is not None
            and out.cosine_similarity < thresholds.min_cosine_similarity
        ):
            failures.append(
                f"{where}: cosine similarity {out.cosine_similarity:.6f} is below "
                f"{thresholds.min_cosine_similarity}"
            )
        if (
            thresholds.min_top1_agreement is not None
            and out.top1_agreement is not None
            and out.top1_agreement < thresholds.min_top1_agreement
        ):
            failures.append(
                f"{where}: top-1 agreement {out.top1_agreement:.2%} is below "
                f"{thresholds.min_top1_agreement:.2%}"
            )
        for metric, limit in (
            ("max_abs_error", thresholds.max_abs_error),
            ("mean_abs_error", thresholds.max_mean_abs_error),
            ("rmse", thresholds.max_rmse),
        ):
            value = getattr(out, metric)
            if limit is not None and value > limit:
                failures.append(f"{where}: {metric.replace('_', ' ')} {value:.6g} is above {limit}")
    if max_size_bytes is not None and size_bytes is not None and size_bytes > max_size_bytes:
        failures.append(f"size {size_bytes:,} bytes is above the limit of {max_size_bytes:,}")
    if max_latency_ms is not None and latency is not None and latency.p95_ms > max_latency_ms:
        failures.append(
            f"host latency p95 {latency.p95_ms:.2f} ms is above the limit of {max_latency_ms} ms"
        )
    return failures


def validate_runner(
    runner: ArtifactRunner,
    *,
    samples: SampleSet,
    reference: Mapping[str, np.ndarray[Any, Any]],
    perms: Mapping[str, tuple[int, ...]],
    thresholds: Thresholds,
    threads: int,
    size_bytes: int | None = None,
    max_size_bytes: int | None = None,
    max_latency_ms: float | None = None,
    latency_plan: LatencyPlan | None = LatencyPlan(),
) -> ValidationReport:
    """Run ``runner`` on ``samples`` (source layout), compare with the source's ``reference``
    outputs, time it, and apply the gates."""
    input_names = match_names(list(samples.arrays), [t.name for t in runner.inputs], "input")
    output_names = match_names(list(reference), [t.name for t in runner.outputs], "output")
    feed = artifact_inputs(samples.arrays, input_names, perms)
    produced = runner.run(feed)
    outputs: list[OutputFidelity] = []
    problems: list[str] = []
    for name, artifact_name in output_names.items():
        fidelity, found = output_fidelity(name, reference[name], produced[artifact_name])
        outputs.append(fidelity)
        problems += found
    latency = None
    if latency_plan is not None:
        one = {name: value[:1] for name, value in feed.items()}
        latency = measure_latency(runner, one, threads=threads, plan=latency_plan)
    failures = problems + check_gates(
        thresholds,
        outputs,
        size_bytes=size_bytes,
        max_size_bytes=max_size_bytes,
        latency=latency,
        max_latency_ms=max_latency_ms,
    )
    return ValidationReport(
        passed=not failures,
        samples=samples.count,
        samples_origin=samples.origin,
        thresholds=thresholds,
        outputs=outputs,
        latency=latency,
        failures=failures,
    )
