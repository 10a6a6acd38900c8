"""Reading and checking artifacts already built: ``model-convert inspect`` and ``validate``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from protocols import MANIFEST_FILENAME, ArtifactManifest, ValidationReport

from .errors import ArtifactError, ValidationFailedError
from .runners import ArtifactRunner, open_runner
from .samples import SampleSet, generate_samples, load_samples
from .sources import file_sha256, open_source
from .tensors import LAYOUT_PERMUTATIONS, TensorSpec
from .validation import LatencyPlan, validate_runner

__all__ = ["Inspection", "inspect_artifact", "read_manifest", "validate_artifact"]

logger = logging.getLogger(__name__)


def read_manifest(folder: Path) -> ArtifactManifest:
    path = folder / MANIFEST_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(
            f"{folder} holds no {MANIFEST_FILENAME}; is it an artifact folder?"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} cannot be read: {exc}") from exc
    try:
        return ArtifactManifest.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ArtifactError(f"{path} is not a valid manifest: {problems}") from None


@dataclass(frozen=True, kw_only=True)
class Inspection:
    folder: Path
    manifest: ArtifactManifest
    problems: tuple[str, ...]
    """Where the file disagrees with its manifest (missing, size, sha256); empty when intact."""


def inspect_artifact(folder: Path) -> Inspection:
    """The manifest, and whether the artifact file still matches it. Imports no ML library."""
    manifest = read_manifest(folder)
    path = folder / manifest.file
    problems: list[str] = []
    if not path.is_file():
        problems.append(f"{manifest.file} is missing")
    else:
        size = path.stat().st_size
        if size != manifest.size_bytes:
            problems.append(
                f"{manifest.file} is {size:,} bytes; the manifest says {manifest.size_bytes:,}"
            )
        digest = file_sha256(path)
        if digest != manifest.sha256:
            problems.append(
                f"{manifest.file} has sha256 {digest}; the manifest says {manifest.sha256}"
            )
    return Inspection(folder=folder, manifest=manifest, problems=tuple(problems))


def validate_artifact(
    folder: Path,
    *,
    source: Path | None = None,
    samples: Path | None = None,
    sample_count: int = 64,
    seed: int = 0,
    latency: LatencyPlan | None = None,
) -> ValidationReport:
    """Check an artifact again: its file against the manifest, then, with ``source``, its
    outputs against the source's under the manifest's thresholds; without a source, that it
    loads, runs and gives finite outputs of the declared shapes. Raises
    :class:`ValidationFailedError` when a check fails."""
    inspection = inspect_artifact(folder)
    manifest = inspection.manifest
    if inspection.problems:
        raise ValidationFailedError(
            f"{folder}: the artifact does not match its manifest: "
            + "; ".join(inspection.problems),
            reports={},
        )
    runner = open_runner(folder / manifest.file, manifest.format, threads=manifest.threads)
    try:
        if source is None:
            report = _smoke(runner, manifest, samples, sample_count, seed)
        else:
            with open_source(source) as opened:
                if opened.sha256 != manifest.source.sha256:
                    logger.warning(
                        "%s is not the source the artifact was built from (sha256 differs)",
                        source,
                    )
                data = (
                    load_samples(samples, opened.inputs, what="samples")
                    if samples is not None
                    else generate_samples(opened.inputs, sample_count, seed=seed)
                )
                reference = opened.run(data.arrays)
                perms = {}
                layouts = {t.name: t.layout for t in manifest.inputs}
                for spec in opened.inputs:
                    wanted = layouts.get(spec.name)
                    if spec.layout and wanted and wanted != spec.layout:
                        perms[spec.name] = LAYOUT_PERMUTATIONS[(spec.layout, wanted)]
                report = validate_runner(
                    runner,
                    samples=data,
                    reference=reference,
                    perms=perms,
                    thresholds=manifest.validation.thresholds,
                    threads=manifest.threads,
                    size_bytes=manifest.size_bytes,
                    latency_plan=latency,
                )
    finally:
        runner.close()
    if not report.passed:
        raise ValidationFailedError(
            f"{folder}: validation failed:\n  " + "\n  ".join(report.failures),
            reports={manifest.profile: report},
        )
    return report


def _smoke(
    runner: ArtifactRunner,
    manifest: ArtifactManifest,
    samples: Path | None,
    sample_count: int,
    seed: int,
) -> ValidationReport:
    specs = [
        TensorSpec(
            name=t.name,
            dtype="float32" if t.quantization is not None else t.datatype.numpy_dtype.name,
            shape=tuple(t.shape),
        )
        for t in manifest.inputs
    ]
    data: SampleSet = (
        load_samples(samples, specs, what="samples")
        if samples is not None
        else generate_samples(specs, sample_count, seed=seed)
    )
    produced = runner.run(data.arrays)
    failures = []
    for tensor in manifest.outputs:
        value = produced.get(tensor.name)
        if value is None:
            failures.append(f"output {tensor.name!r} is missing")
            continue
        if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            failures.append(f"output {tensor.name!r} has NaN or infinite values")
        declared = tensor.shape
        if len(declared) != value.ndim or any(
            d >= 0 and d != s for d, s in zip(declared[1:], value.shape[1:], strict=True)
        ):
            failures.append(
                f"output {tensor.name!r} has shape {list(value.shape)}; declared {declared}"
            )
    return ValidationReport(
        passed=not failures,
        samples=data.count,
        samples_origin=data.origin,
        thresholds=manifest.validation.thresholds,
        outputs=[],
        failures=failures,
    )
