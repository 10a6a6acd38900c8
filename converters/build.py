"""One build: a source, some profiles, an output folder; an artifact and a manifest per profile.

The order is fixed so that cheap mistakes fail first: profiles and the output folder are
checked before the source is opened (and TensorFlow imported), calibration and sample files
are checked against the source's inputs before anything is converted, and every artifact is
converted, validated and given its manifest in a staging folder inside the output folder.
Only when every artifact passed are they moved into place, each with one rename: a failure at
any point leaves the output folder as it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocols import (
    MANIFEST_FILENAME,
    ArtifactManifest,
    CalibrationInfo,
    ManifestTensor,
    SmokeTest,
    SourceInfo,
    ValidationReport,
    artifact_file,
    is_model_name,
    is_version,
)

from ._libs import library_versions
from .errors import ProfileError, ValidationFailedError
from .profiles import DeviceProfile, load_profiles
from .runners import open_runner
from .samples import SampleSet, generate_samples, load_samples
from .smoke import make_smoke_test
from .sources import Source, file_sha256, open_source
from .targets import TargetRequest, converter_for
from .tensors import Layout, layout_permutations
from .validation import LatencyPlan, artifact_inputs, match_names, validate_runner

__all__ = [
    "DEFAULT_SAMPLE_COUNT",
    "BuildRequest",
    "BuildResult",
    "BuiltArtifact",
    "Progress",
    "build",
    "write_manifest",
]

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
"""Called with a step's description and the share of the build done before it (0 to 1)."""

DEFAULT_SAMPLE_COUNT = 64
CALIBRATED = ("int8",)
"""Precisions that need calibration data."""


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    source: Path
    profiles: Sequence[str | Path]
    """Profile names or YAML files."""
    out_dir: Path
    """Artifacts land in ``out_dir/<profile>/`` (the model file and ``manifest.json``)."""
    calibration: Path | None = None
    samples: Path | None = None
    name: str | None = None
    """The artifacts' name in their manifests; the source's file name without suffix by default."""
    version: str = "1"
    overwrite: bool = False
    """Replace artifacts already in ``out_dir``; without it, an existing one stops the build."""
    profile_dirs: Sequence[Path] = ()
    sample_count: int = DEFAULT_SAMPLE_COUNT
    """Samples generated for validation when no ``samples`` file is given."""
    seed: int = 0
    latency: LatencyPlan | None = field(default_factory=LatencyPlan)
    """``None`` skips the latency measurement."""


@dataclass(frozen=True, kw_only=True)
class BuiltArtifact:
    profile: DeviceProfile
    directory: Path
    file: Path
    manifest: ArtifactManifest


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    artifacts: tuple[BuiltArtifact, ...]
    warnings: tuple[str, ...]


def _default_name(source: Path) -> str:
    stem = source.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip", ".keras", ".h5", ".onnx"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", stem).lstrip("-_.")
    return cleaned or "model"


def _version_of_package() -> str:
    try:
        return importlib.metadata.version("hybrid-inference")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def write_manifest(folder: Path, manifest: ArtifactManifest) -> Path:
    path = folder / MANIFEST_FILENAME
    path.write_text(manifest.to_json(), encoding="utf-8")
    return path


def build(request: BuildRequest, progress: Progress | None = None) -> BuildResult:
    """Build, validate and write every profile's artifact; see the module's note on order."""
    report = progress or (lambda _message, _fraction: None)
    profiles = load_profiles(request.profiles, dirs=request.profile_dirs)
    name = request.name or _default_name(request.source)
    if not is_model_name(name):
        raise ProfileError(f"artifact name {name!r}: use letters, digits, '_', '.', '-'")
    if not is_version(request.version):
        raise ProfileError(
            f"artifact version {request.version!r}: use letters, digits, '_', '.', '-'"
        )
    if request.sample_count < 1:
        raise ProfileError("the generated sample count must be at least 1")
    existing = [p.name for p in profiles if (request.out_dir / p.name).exists()]
    if existing and not request.overwrite:
        raise ProfileError(
            f"{request.out_dir} already holds {', '.join(existing)}; pass --overwrite to replace"
        )
    steps = 2 + 2 * len(profiles)
    created_out_dir = not request.out_dir.exists()
    request.out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-convert-", dir=request.out_dir))
    placed_all = False
    try:
        report(f"opening {request.source.name}", 0.0)
        with open_source(request.source) as source:
            logger.info("source %s", source.describe())
            warnings: list[str] = []
            samples, calibration = _data(request, profiles, source, warnings)
            report(f"running the source on {samples.count} samples", 1 / steps)
            reference = source.run(samples.arrays)
            built: list[BuiltArtifact] = []
            reports: dict[str, ValidationReport] = {}
            work = staging / "work"
            work.mkdir()
            state = _Build(
                request=request,
                source=source,
                name=name,
                staging=staging,
                work=work,
                samples=samples,
                calibration=calibration,
                reference=reference,
                report=report,
            )
            for index, profile in enumerate(profiles):
                artifact = state.convert(profile, (2 + 2 * index) / steps, 1 / steps)
                reports[profile.name] = artifact.manifest.validation
                built.append(artifact)
            failed = [n for n, r in reports.items() if not r.passed]
            if failed:
                lines = [f"{n}: {failure}" for n in failed for failure in reports[n].failures]
                raise ValidationFailedError(
                    f"{len(failed)} of {len(profiles)} artifacts failed validation, nothing was "
                    "written:\n  " + "\n  ".join(lines),
                    reports=reports,
                )
            report("moving the artifacts into place", 1.0)
            placed = tuple(_place(a, request.out_dir, staging) for a in built)
            placed_all = True
            return BuildResult(artifacts=placed, warnings=tuple(warnings))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created_out_dir and not placed_all:
            with contextlib.suppress(OSError):
                request.out_dir.rmdir()  # only when empty: never anything of the caller's


def _data(
    request: BuildRequest,
    profiles: Sequence[DeviceProfile],
    source: Source,
    warnings: list[str],
) -> tuple[SampleSet, SampleSet | None]:
    if request.samples is not None:
        samples = load_samples(request.samples, source.inputs, what="samples")
    else:
        samples = generate_samples(source.inputs, request.sample_count, seed=request.seed)
    calibration = None
    if request.calibration is not None:
        calibration = load_samples(request.calibration, source.inputs, what="calibration")
    calibrated = [p for p in profiles if p.precision in CALIBRATED]
    if calibrated and calibration is None:
        count = max(p.calibration_samples for p in calibrated)
        calibration = generate_samples(source.inputs, count, seed=request.seed + 1)
        message = (
            f"no --calibration file: {', '.join(p.name for p in calibrated)} calibrated on "
            f"{count} generated random samples, so int8 accuracy on real inputs is unknown; "
            "pass --calibration with a few hundred real inputs"
        )
        warnings.append(message)
        logger.warning("%s", message)
    if request.samples is None:
        message = (
            f"no --samples file: validated on {samples.count} generated random samples; "
            "pass --samples with real inputs for meaningful fidelity figures"
        )
        warnings.append(message)
        logger.info("%s", message)
    return samples, calibration


@dataclass(frozen=True, kw_only=True)
class _Build:
    """What every profile of one build shares."""

    request: BuildRequest
    source: Source
    name: str
    staging: Path
    work: Path
    samples: SampleSet
    calibration: SampleSet | None
    reference: dict[str, np.ndarray[Any, Any]]
    report: Progress

    def convert(self, profile: DeviceProfile, fraction: float, step: float) -> BuiltArtifact:
        """Convert, validate and describe one profile's artifact in the staging folder."""
        source, samples = self.source, self.samples
        self.report(f"{profile.name}: converting to {profile.format} {profile.precision}", fraction)
        folder = self.staging / profile.name
        folder.mkdir()
        output = folder / artifact_file(profile.format)
        needs_calibration = profile.precision in CALIBRATED
        target = TargetRequest(
            source=source,
            profile=profile,
            output=output,
            work_dir=self.work,
            calibration=self.calibration if needs_calibration else None,
            perms=layout_permutations(source.inputs, profile.input_layout),
        )
        result = converter_for(profile.format)(target)
        for note in result.notes:
            logger.info("%s: %s", profile.name, note)
        self.report(f"{profile.name}: validating on {samples.count} samples", fraction + step)
        size_bytes = output.stat().st_size
        runner = open_runner(output, profile.format, threads=profile.threads)
        try:
            validation = validate_runner(
                runner,
                samples=samples,
                reference=self.reference,
                perms=result.perms,
                thresholds=profile.thresholds,
                threads=profile.threads,
                size_bytes=size_bytes,
                max_size_bytes=profile.max_size_bytes,
                max_latency_ms=profile.max_latency_ms,
                latency_plan=self.request.latency,
            )
            inputs = _with_layouts(runner.inputs, source, result.perms)
            outputs = runner.outputs
            smoke = (
                _smoke_test(runner, samples, result.perms, profile) if validation.passed else None
            )
        finally:
            runner.close()
        if validation.passed:
            logger.info("%s: passed validation", profile.name)
        else:
            logger.warning(
                "%s: failed validation: %s", profile.name, "; ".join(validation.failures)
            )
        calibration_info = None
        if needs_calibration and self.calibration is not None:
            calibration_info = CalibrationInfo(
                origin=self.calibration.origin,
                samples=min(self.calibration.count, profile.calibration_samples),
                sha256=self.calibration.sha256,
            )
        manifest = ArtifactManifest(
            name=self.name,
            version=self.request.version,
            profile=profile.name,
            device_class=profile.device_class,
            format=profile.format,
            precision=profile.precision,
            file=output.name,
            sha256=file_sha256(output),
            size_bytes=size_bytes,
            inputs=inputs,
            outputs=outputs,
            threads=profile.threads,
            source=SourceInfo(filename=source.filename, format=source.format, sha256=source.sha256),
            calibration=calibration_info,
            tools=library_versions({"hybrid-inference": _version_of_package(), **result.tools}),
            validation=validation,
            created_at=dt.datetime.now(dt.timezone.utc),
            smoke_test=smoke,
        )
        write_manifest(folder, manifest)
        return BuiltArtifact(profile=profile, directory=folder, file=output, manifest=manifest)


def _smoke_test(
    runner: Any, samples: SampleSet, perms: Mapping[str, tuple[int, ...]], profile: DeviceProfile
) -> SmokeTest | None:
    """The first validation samples and the artifact's answers, for devices to check."""
    names = match_names(list(samples.arrays), [t.name for t in runner.inputs], "input")
    feed = artifact_inputs(samples.arrays, names, perms)
    return make_smoke_test(runner, feed, precision=profile.precision)


def _with_layouts(
    tensors: Sequence[ManifestTensor], source: Source, perms: Mapping[str, tuple[int, ...]]
) -> list[ManifestTensor]:
    """The artifact's inputs, each 4-D one marked with the layout it takes."""
    layouts: dict[str, Layout] = {}
    for spec in source.inputs:
        if spec.layout is not None:
            flipped: Layout = "NCHW" if spec.layout == "NHWC" else "NHWC"
            layouts[spec.name] = flipped if spec.name in perms else spec.layout
    marked = []
    by_position = len(tensors) == len(source.inputs)
    for position, tensor in enumerate(tensors):
        key = tensor.name if tensor.name in layouts else None
        if key is None and by_position:
            key = source.inputs[position].name
        layout = layouts.get(key or "")
        marked.append(tensor.model_copy(update={"layout": layout}) if layout else tensor)
    return marked


def _place(artifact: BuiltArtifact, out_dir: Path, staging: Path) -> BuiltArtifact:
    target = out_dir / artifact.profile.name
    if target.exists():
        retired = staging / f"replaced-{artifact.profile.name}"
        target.rename(retired)
    artifact.directory.rename(target)
    logger.info("wrote %s", target)
    return BuiltArtifact(
        profile=artifact.profile,
        directory=target,
        file=target / artifact.file.name,
        manifest=artifact.manifest,
    )
