"""Every CPU artifact of three models: size, host latency and fidelity to the source.

The digits conv net (trained, 151k parameters), a 100-class conv net trained on generated images
(``tests/unit/converters/sources.py``: each class a fixed pattern of Gaussian blobs, seen shifted
and noisy) and MobileNetV2 (``weights=None``, batch-norm statistics set from random images) are
built to every CPU target by ``converters.build``, then
each artifact is timed here on one sample at a time with one thread, in the runtime that serves
it (LiteRT, ONNX Runtime), against the float32 artifact of the same format as the baseline.
Fidelity is the build's validation report: the digits on their 397 held-out images, the
100 classes on 2,000 held-out images, MobileNetV2 on 8 random images (its classes are near-ties, so its top-1 figures mean little).

Each row says which gates its artifact passed, from its validation report and profile: the digits
and the 100 classes are built with every default gate on (a missed gate would stop the build); MobileNetV2 with its
fidelity gates off, so its rows say so and which of the profile's default gates its figures meet
or miss.

    python -m benchmarks.converter
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.results import median_seconds, write_section
from converters.build import BuildRequest, build
from converters.profiles import load_profile
from converters.runners import open_runner
from converters.validation import check_gates
from protocols import ArtifactManifest
from tests.unit.converters.sources import (
    ensure_digits_source,
    ensure_mobilenet_v2,
    ensure_shapes100_source,
    image_samples,
)

COMMAND = "python -m benchmarks.converter"
THREADS = 1
P95_RUNS = 60
PROFILES = [
    "x86-gateway-litert-fp32",
    "rpi4-litert-fp16",
    "rpi3-litert-int8-dynamic",
    "rpi4-litert-int8",
    "rpi4-litert-int8-float-io",
    "cloud-cpu-onnx",
    "cloud-cpu-onnx-fp16",
]
BASELINE = {"tflite": "x86-gateway-litert-fp32", "onnx": "cloud-cpu-onnx"}
# MobileNetV2's random classes are near-ties: gate it on nothing, report everything.
UNGATED = "validation: {min_top1_agreement: null, min_cosine_similarity: null}\n"


@dataclass(frozen=True, kw_only=True)
class Row:
    model: str
    manifest: ArtifactManifest
    median_ms: float
    p95_ms: float
    accuracy: float | None
    gates: str
    """Which gates the artifact passed, or that it was built with its fidelity gates off."""


def _percent(value: float) -> str:
    return f"{value:.0%}" if value * 100 == round(value * 100) else f"{value:.2%}"


def _gates(manifest: ArtifactManifest, max_size_bytes: int | None) -> str:
    """The gates of the artifact's build and its result, from its validation report."""
    th = manifest.validation.thresholds
    named = []
    if th.min_cosine_similarity is not None:
        named.append(f"cosine ≥ {th.min_cosine_similarity:g}")
    if th.min_top1_agreement is not None:
        named.append(f"top-1 ≥ {_percent(th.min_top1_agreement)}")
    for label, limit in (
        ("max abs error", th.max_abs_error),
        ("mean abs error", th.max_mean_abs_error),
        ("rmse", th.max_rmse),
    ):
        if limit is not None:
            named.append(f"{label} ≤ {limit:g}")
    size = [f"size ≤ {max_size_bytes / 2**20:,.0f} MiB"] if max_size_bytes else []
    result = "passed" if manifest.validation.passed else "MISSED"
    if named:
        return f"{', '.join(named + size)}: {result}"
    # built ungated: say so, and how its figures stand against the profile's default gates
    defaults = load_profile(manifest.profile).thresholds
    misses = check_gates(defaults, manifest.validation.outputs)
    verdict = (
        "default gates would pass"
        if not misses
        else "default gates missed: " + "; ".join(m.split(": ", 1)[-1] for m in misses)
    )
    return f"**fidelity gates off** ({verdict}){'; ' + size[0] + ': ' + result if size else ''}"


def _time(path: Path, manifest: ArtifactManifest, one: np.ndarray) -> tuple[float, float]:
    runner = open_runner(path, manifest.format, threads=THREADS)
    name = runner.inputs[0].name
    feed = {name: one}
    median_s = median_seconds(lambda: runner.run(feed), min_time_s=1.0, repeats=5)
    times = []
    for _ in range(P95_RUNS):
        start = time.perf_counter()
        runner.run(feed)
        times.append(time.perf_counter() - start)
    runner.close()
    return median_s * 1e3, float(np.percentile(times, 95)) * 1e3


def _model_rows(
    model: str,
    source: Path,
    root: Path,
    samples: Path,
    calibration: Path,
    profile_dir: Path | None,
    labels: np.ndarray | None,
) -> list[Row]:
    profiles = PROFILES
    if profile_dir is not None:
        profile_dir.mkdir()
        for name in PROFILES:
            (profile_dir / f"{name}.yaml").write_text(
                f"extends: {name}\ncalibration_samples: 32\n{UNGATED}"
            )
    result = build(
        BuildRequest(
            source=source,
            profiles=profiles,
            out_dir=root / model,
            samples=samples,
            calibration=calibration,
            profile_dirs=[profile_dir] if profile_dir else [],
            latency=None,
        )
    )
    with np.load(samples) as data:
        x = data[next(iter(data.files))]
    rows = []
    for artifact in result.artifacts:
        manifest = artifact.manifest
        median_ms, p95_ms = _time(artifact.file, manifest, x[:1])
        accuracy = None
        if labels is not None:
            runner = open_runner(artifact.file, manifest.format, threads=2)
            out = runner.run({runner.inputs[0].name: x})
            accuracy = float(np.mean(next(iter(out.values())).argmax(1) == labels))
            runner.close()
        rows.append(
            Row(
                model=model,
                manifest=manifest,
                median_ms=median_ms,
                p95_ms=p95_ms,
                accuracy=accuracy,
                gates=_gates(manifest, artifact.profile.max_size_bytes),
            )
        )
        print(
            f"  {model} {manifest.profile}: {manifest.size_bytes:,} B, {median_ms:.3f} ms",
            flush=True,
        )
    return rows


def _table(rows: list[Row]) -> list[str]:
    lines = [
        (
            "| model | profile | format | precision | size | vs fp32 | median ms | p95 ms "
            "| vs fp32 | cosine (mean / min) | top-1 agreement | accuracy | gates |"
        ),
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    base = {(r.model, r.manifest.profile): r for r in rows}
    for row in rows:
        m = row.manifest
        ref = base[(row.model, BASELINE[m.format])]
        out = m.validation.outputs[0]
        top1 = f"{out.top1_agreement:.2%}" if out.top1_agreement is not None else "-"
        accuracy = f"{row.accuracy:.2%}" if row.accuracy is not None else "-"
        lines.append(
            f"| {row.model} | {m.profile} | {m.format} | {m.precision} | {m.size_bytes / 1024:,.0f} KiB "
            f"| {m.size_bytes / ref.manifest.size_bytes:.2f}x | {row.median_ms:.3f} | {row.p95_ms:.3f} "
            f"| {row.median_ms / ref.median_ms:.2f}x | {out.cosine_similarity:.6f} / "
            f"{out.cosine_similarity_min:.6f} | {top1} | {accuracy} | {row.gates} |"
        )
    return lines


def run() -> str:
    digits = ensure_digits_source()
    mobilenet = ensure_mobilenet_v2()
    x_train, x_test, y_test = digits.arrays()
    with tempfile.TemporaryDirectory(prefix="bench-converter-") as folder:
        root = Path(folder)
        np.savez(root / "digits_samples.npz", pixels=x_test)
        np.savez(root / "digits_calibration.npz", pixels=x_train[:400])
        rows = _model_rows(
            "digits CNN",
            digits.keras,
            root,
            root / "digits_samples.npz",
            root / "digits_calibration.npz",
            None,
            y_test,
        )
        shapes = ensure_shapes100_source()
        s_train, s_test, s_labels = shapes.arrays()
        np.savez(root / "shapes_samples.npz", image=s_test)
        np.savez(root / "shapes_calibration.npz", image=s_train[:500])
        rows += _model_rows(
            "100-class CNN",
            shapes.keras,
            root,
            root / "shapes_samples.npz",
            root / "shapes_calibration.npz",
            None,
            s_labels,
        )
        rows += _model_rows(
            "MobileNetV2",
            mobilenet,
            root,
            image_samples(root / "mobilenet_samples.npz", 8),
            image_samples(root / "mobilenet_calibration.npz", 32, seed=1),
            root / "mobilenet_profiles",
            None,
        )
    body = "\n".join(
        [
            "## Converter: every CPU artifact's size, host latency and fidelity",
            "",
            (
                f"Reproduce: `{COMMAND}`. Each artifact built by `converters.build` from the "
                "source (digits: trained conv net, 151k parameters, validated on its 397 held-out "
                "images, calibrated on 400 training images; 100-class CNN: trained on generated images "
                "(each class a fixed pattern of Gaussian blobs, shifted and noisy), validated on "
                "2,000 held-out images, calibrated on 500 training images; MobileNetV2: `weights=None`, 8 random "
                "images, calibrated on 32, its near-tied classes make top-1 meaningless). "
                f"Latency: one sample per call, {THREADS} thread, LiteRT (`ai_edge_litert`) or "
                "ONNX Runtime (CPU), median of batched runs and p95 of single calls; baseline: the "
                "fp32 artifact of the same format. Cosine and top-1 are against the source "
                "model's outputs; accuracy against the held-out labels. Gates: those the artifact "
                "was built with and passed (its validation report and profile); MobileNetV2 is "
                "built with its fidelity gates off (untrained, its near-tied classes cannot "
                "carry them), and its rows say which of the profile's default gates its figures "
                "meet or miss."
            ),
            "",
            *_table(rows),
        ]
    )
    write_section("converter", body)
    print(body)
    return body


if __name__ == "__main__":
    run()
