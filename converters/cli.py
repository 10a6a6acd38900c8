"""``model-convert``: device-specific artifacts from one source model, validated.

Commands map flags onto the library (:func:`converters.build.build`,
:func:`converters.artifact.inspect_artifact`, ...). Results go to stdout (``--json`` for
programs), progress and logs to stderr, and the exit code says what happened (see
:data:`converters.errors.EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from .errors import EXIT_CODES, ConversionError, ValidationFailedError

__all__ = ["main"]

logger = logging.getLogger(__name__)

PROG = "model-convert"


def _exit_codes_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build device-specific model artifacts (TFLite, ONNX, TensorRT) from one "
        "source model, each validated against the source and described by a manifest.",
        epilog=_exit_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser(
        "build",
        help="convert SOURCE for each profile, validate, write artifacts and manifests",
        epilog=_exit_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument(
        "source", type=Path, help=".keras/.h5/.onnx file, SavedModel folder, or an archive of one"
    )
    build.add_argument(
        "--profile",
        "-p",
        dest="profiles",
        action="append",
        required=True,
        metavar="PROFILE",
        help="a profile name (see `model-convert profiles`) or a YAML file; repeat for more",
    )
    build.add_argument(
        "--out", "-o", type=Path, required=True, help="output folder: one sub-folder per profile"
    )
    build.add_argument(
        "--calibration",
        type=Path,
        help=".npz of real inputs for int8 calibration (one array per input, samples first); "
        "without it, int8 is calibrated on generated data, with a warning",
    )
    build.add_argument(
        "--samples",
        type=Path,
        help=".npz of inputs to validate on; without it, random samples are generated",
    )
    build.add_argument("--name", help="artifact name in the manifests (default: the source's stem)")
    build.add_argument("--version", default="1", help="artifact version in the manifests")
    build.add_argument(
        "--overwrite", action="store_true", help="replace artifacts already in the output folder"
    )
    build.add_argument(
        "--sample-count", type=int, default=64, help="generated validation samples (default 64)"
    )
    build.add_argument(
        "--no-latency", action="store_true", help="skip the host latency measurement"
    )
    _common(build)

    profiles = commands.add_parser("profiles", help="list the built-in and user profiles")
    _common(profiles)

    inspect = commands.add_parser("inspect", help="show an artifact's manifest and check its file")
    inspect.add_argument("artifact", type=Path, help="an artifact folder (holding manifest.json)")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")

    validate = commands.add_parser(
        "validate",
        help="check an artifact again: file against manifest, and against its source if given",
    )
    validate.add_argument("artifact", type=Path, help="an artifact folder (holding manifest.json)")
    validate.add_argument(
        "--source",
        type=Path,
        help="the source model, to compare outputs under the manifest's thresholds",
    )
    validate.add_argument("--samples", type=Path, help=".npz of inputs (the source's layout)")
    validate.add_argument("--sample-count", type=int, default=64)
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    _signing_commands(commands)
    _distill_command(commands)
    return parser


def _distill_command(commands: Any) -> None:
    distill = commands.add_parser(
        "distill",
        help="fine-tune a Keras edge model on the fleet's captured fallbacks (the cloud's "
        "outputs as soft targets) mixed with a reference set; gated, with a report",
        description="Fine-tune SOURCE on capture shards (from --captured files or folders, or "
        "downloaded with --hub/--capture-model) and a labelled reference set; write "
        "OUT/model.keras only when the candidate beats SOURCE on held-out captured records and "
        "loses at most --margin on the held-out reference set. Exit 8 when refused.",
    )
    distill.add_argument("source", type=Path, help="the current edge model (.keras)")
    distill.add_argument(
        "--captured",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="a capture shard (.npz) or a folder of them; repeat for more",
    )
    distill.add_argument("--hub", help="download the capture shards from this hub first")
    distill.add_argument(
        "--capture-model", help="the hub model whose shards to download (with --hub)"
    )
    distill.add_argument(
        "--api-key",
        default=os.environ.get("HYBRID_CONVERT_API_KEY"),
        help="an admin-scope API key for --hub (also HYBRID_CONVERT_API_KEY)",
    )
    distill.add_argument(
        "--reference",
        type=Path,
        required=True,
        help=".npz with x (inputs) and y (integer labels): what the model must not forget",
    )
    distill.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    distill.add_argument("--input", dest="input_name", help="captured input to train on")
    distill.add_argument("--output", dest="output_name", help="captured cloud output to learn")
    distill.add_argument(
        "--holdout", type=float, default=0.2, help="share of captured records held out (0.2)"
    )
    distill.add_argument(
        "--reference-holdout",
        type=float,
        default=0.0,
        help="share of the reference set held out for its gate (default 0: judge on all of it)",
    )
    distill.add_argument(
        "--margin",
        type=float,
        default=0.01,
        help="largest reference accuracy drop allowed (default 0.01: one point)",
    )
    distill.add_argument(
        "--min-gain",
        type=float,
        default=0.0,
        help="agreement with the cloud must rise by more than this (default 0)",
    )
    distill.add_argument("--epochs", type=int, default=30)
    distill.add_argument("--learning-rate", type=float, default=1e-3)
    distill.add_argument("--batch-size", type=int, default=32)
    distill.add_argument(
        "--capture-weight", type=float, default=1.0, help="a captured record's weight in the loss"
    )
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--overwrite", action="store_true", help="replace OUT/model.keras")
    distill.add_argument("--json", action="store_true", help="print the report as JSON")


def _cmd_distill(args: argparse.Namespace, out: TextIO) -> int:
    from .distill import DistillPlan, distill, download_shards
    from .errors import CalibrationError

    captured = list(args.captured)
    if args.hub is not None:
        if not args.capture_model:
            raise CalibrationError("--hub needs --capture-model")
        folder = args.out / "captured"
        count = download_shards(args.hub, args.capture_model, folder, api_key=args.api_key)
        logger.info("downloaded %d shards of %s", count, args.capture_model)
        captured.append(folder)
    if not captured:
        raise CalibrationError("give --captured or --hub with --capture-model")
    report = distill(
        DistillPlan(
            source=args.source,
            captured=captured,
            reference=args.reference,
            out_dir=args.out,
            input_name=args.input_name,
            output_name=args.output_name,
            holdout=args.holdout,
            reference_holdout=args.reference_holdout,
            margin=args.margin,
            min_gain=args.min_gain,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            capture_weight=args.capture_weight,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    )
    if args.json:
        _print_json(out, report.as_json())
        return 0
    out.write(report.markdown())
    return 0


def _signing_commands(commands: Any) -> None:
    keygen = commands.add_parser(
        "keygen", help="make an Ed25519 key pair for signing releases (PREFIX.key, PREFIX.pub)"
    )
    keygen.add_argument("prefix", type=Path, help="path prefix of the two key files")
    keygen.add_argument("--overwrite", action="store_true", help="replace existing key files")
    keygen.add_argument("--json", action="store_true", help="print the key id and key as JSON")

    sign = commands.add_parser(
        "sign",
        help="sign an artifact folder's manifest with an expiry: writes release.json beside it "
        "(run again with another key to add a signature)",
    )
    sign.add_argument("artifact", type=Path, help="an artifact folder (holding manifest.json)")
    sign.add_argument(
        "--key",
        dest="keys",
        action="append",
        type=Path,
        required=True,
        help="a private key file (PEM); repeat for more signatures",
    )
    sign.add_argument(
        "--expires-in-days",
        type=float,
        default=30.0,
        help="devices refuse the release after this many days (default 30)",
    )
    sign.add_argument(
        "--latency-budget-ms",
        type=float,
        help="run time per request the model must keep in a device's health window",
    )
    sign.add_argument(
        "--resign", action="store_true", help="start a new release instead of adding signatures"
    )
    sign.add_argument("--json", action="store_true", help="print the release as JSON")

    publish = commands.add_parser(
        "publish",
        help="upload a signed artifact to a hub, which stores it and announces it to devices",
    )
    publish.add_argument("artifact", type=Path, help="a signed artifact folder")
    publish.add_argument("--hub", required=True, help="the hub's URL (http://host:port)")
    publish.add_argument(
        "--api-key",
        default=os.environ.get("HYBRID_CONVERT_API_KEY"),
        help="an admin-scope API key or token (also HYBRID_CONVERT_API_KEY)",
    )
    publish.add_argument("--json", action="store_true", help="print the hub's answer as JSON")


def _cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    from .signing import generate_keypair

    pair = generate_keypair(args.prefix, overwrite=args.overwrite)
    if args.json:
        _print_json(
            out,
            {
                "private_key": str(pair.private_path),
                "public_key": str(pair.public_path),
                "key_id": pair.key_id,
                "public_base64": pair.public_base64,
            },
        )
        return 0
    out.write(
        f"private key  {pair.private_path} (keep it secret)\n"
        f"public key   {pair.public_path}\n"
        f"key id       {pair.key_id}\n"
        f"for an agent's updates.trusted_keys: {pair.public_base64}\n"
    )
    return 0


def _cmd_sign(args: argparse.Namespace, out: TextIO) -> int:
    from .signing import load_private_key, sign_artifact

    if args.expires_in_days <= 0:
        from .signing import SigningError

        raise SigningError("--expires-in-days must be above 0")
    keys = [load_private_key(path) for path in args.keys]
    release = sign_artifact(
        args.artifact,
        keys,
        expires_in_s=args.expires_in_days * 86_400,
        latency_budget_ms=args.latency_budget_ms,
        resign=args.resign,
    )
    if args.json:
        _print_json(out, release.model_dump(mode="json"))
        return 0
    m = release.manifest
    out.write(
        f"signed {m.name} {m.version} for {m.device_class} ({m.sha256[:16]}...), "
        f"{len(release.signatures)} signature(s), expires {release.signed.expires_at.isoformat()}\n"
    )
    return 0


def _cmd_publish(args: argparse.Namespace, out: TextIO) -> int:
    from .publish import publish_artifact

    result = publish_artifact(args.artifact, args.hub, api_key=args.api_key)
    if args.json:
        _print_json(out, result)
        return 0
    out.write(
        f"published {result.get('name')} {result.get('version')} for "
        f"{result.get('device_class')}; "
        + (
            f"announced on {result.get('topic')}"
            if result.get("announced")
            else "stored, not announced (the hub has no MQTT broker)"
        )
        + "\n"
    )
    return 0


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--profile-dir",
        dest="profile_dirs",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a folder of user profiles (also HYBRID_CONVERT_PROFILE_DIRS)",
    )
    command.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    if command.prog.endswith("build"):
        command.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


@contextlib.contextmanager
def _reserved_stdout(enabled: bool) -> Iterator[TextIO]:
    """While enabled, anything written to file descriptor 1 (libraries print there) goes to
    stderr; the yielded stream is the real stdout, kept for the command's own output."""
    if not enabled:
        yield sys.stdout
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(os.dup(saved), "w", encoding="utf-8")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield real
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        real.flush()
        real.close()


def _print_json(out: TextIO, data: Any) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    out.flush()


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _fidelity_cells(report: Any) -> tuple[str, str, str]:
    outputs = report.outputs
    cosine = min((o.cosine_similarity for o in outputs), default=1.0)
    top1s = [o.top1_agreement for o in outputs if o.top1_agreement is not None]
    top1 = f"{min(top1s):.2%}" if top1s else "-"
    latency = report.latency
    timing = f"{latency.p50_ms:.2f}/{latency.p95_ms:.2f}" if latency else "-"
    return f"{cosine:.6f}", top1, timing


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    from .build import BuildRequest, build
    from .progress import StderrProgress
    from .validation import LatencyPlan

    progress = None if args.quiet else StderrProgress()
    try:
        result = build(
            BuildRequest(
                source=args.source,
                profiles=args.profiles,
                out_dir=args.out,
                calibration=args.calibration,
                samples=args.samples,
                name=args.name,
                version=args.version,
                overwrite=args.overwrite,
                profile_dirs=args.profile_dirs,
                sample_count=args.sample_count,
                latency=None if args.no_latency else LatencyPlan(),
            ),
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        _print_json(
            out,
            {
                "artifacts": [
                    {
                        "profile": a.profile.name,
                        "directory": str(a.directory),
                        "file": str(a.file),
                        "manifest": a.manifest.model_dump(mode="json"),
                    }
                    for a in result.artifacts
                ],
                "warnings": list(result.warnings),
            },
        )
        return 0
    rows = [["profile", "format", "precision", "size", "cosine", "top-1", "p50/p95 ms", "path"]]
    for a in result.artifacts:
        m = a.manifest
        rows.append(
            [
                m.profile,
                m.format,
                m.precision,
                _human_size(m.size_bytes),
                *_fidelity_cells(m.validation),
                str(a.file),
            ]
        )
    out.write(_table(rows) + "\n")
    for warning in result.warnings:
        out.write(f"note: {warning}\n")
    return 0


def _cmd_profiles(args: argparse.Namespace, out: TextIO) -> int:
    from .profiles import available_profiles, load_profile

    entries = available_profiles(args.profile_dirs)
    listed: list[dict[str, Any]] = []
    for entry in entries.values():
        try:
            profile = load_profile(entry.path, dirs=args.profile_dirs)
        except ConversionError as exc:
            listed.append(
                {
                    "name": entry.name,
                    "path": str(entry.path),
                    "builtin": entry.builtin,
                    "error": exc.message,
                }
            )
            continue
        listed.append(
            {
                "name": profile.name,
                "path": str(entry.path),
                "builtin": entry.builtin,
                **profile.model_dump(mode="json", exclude={"name", "validation"}),
                "thresholds": profile.thresholds.model_dump(mode="json"),
            }
        )
    if args.json:
        _print_json(out, {"profiles": listed})
        return 0
    rows = [["name", "device class", "format", "precision", "threads", "origin", "description"]]
    for item in listed:
        if "error" in item:
            rows.append(
                [item["name"], "-", "-", "-", "-", str(item["path"]), f"INVALID: {item['error']}"]
            )
            continue
        rows.append(
            [
                item["name"],
                item["device_class"],
                item["format"],
                item["precision"],
                str(item["threads"]),
                "built-in" if item["builtin"] else str(item["path"]),
                item["description"],
            ]
        )
    out.write(_table(rows) + "\n")
    return 0


def _cmd_inspect(args: argparse.Namespace, out: TextIO) -> int:
    from .artifact import inspect_artifact

    inspection = inspect_artifact(args.artifact)
    m = inspection.manifest
    if args.json:
        _print_json(
            out, {"manifest": m.model_dump(mode="json"), "problems": list(inspection.problems)}
        )
        return 0 if not inspection.problems else ValidationFailedError.exit_code

    def tensors(items: Any) -> str:
        lines = []
        for t in items:
            extra = f" {t.layout}" if t.layout else ""
            if t.quantization is not None:
                q = t.quantization
                extra += (
                    f" scale={q.scale[0]:.6g} zero_point={q.zero_point[0]}"
                    if len(q.scale) == 1
                    else f" per-channel({len(q.scale)}, axis {q.axis})"
                )
            lines.append(f"    {t.name} {t.datatype.value}{t.shape}{extra}")
        return "\n".join(lines)

    report = m.validation
    cosine, top1, timing = _fidelity_cells(report)
    text = [
        f"{m.name} {m.version}  ({m.profile}: {m.format} {m.precision} for {m.device_class})",
        f"  file       {m.file}, {_human_size(m.size_bytes)} ({m.size_bytes:,} bytes)",
        f"  sha256     {m.sha256} "
        + (
            "(ok)"
            if not inspection.problems
            else "(MISMATCH: " + "; ".join(inspection.problems) + ")"
        ),
        "  inputs",
        tensors(m.inputs),
        "  outputs",
        tensors(m.outputs),
        f"  source     {m.source.filename} ({m.source.format}, sha256 {m.source.sha256[:16]}...)",
    ]
    if m.calibration is not None:
        text.append(f"  calibrated on {m.calibration.samples} {m.calibration.origin} samples")
    text += [
        (
            f"  validation {'passed' if report.passed else 'FAILED'} on {report.samples} {report.samples_origin} "
            f"samples: cosine {cosine}, top-1 {top1}, p50/p95 {timing} ms"
        ),
        *(f"    {failure}" for failure in report.failures),
        "  tools      " + ", ".join(f"{k} {v}" for k, v in sorted(m.tools.items())),
        f"  created    {m.created_at.isoformat()}",
    ]
    out.write("\n".join(text) + "\n")
    return 0 if not inspection.problems else ValidationFailedError.exit_code


def _cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    from .artifact import validate_artifact
    from .validation import LatencyPlan

    report = validate_artifact(
        args.artifact,
        source=args.source,
        samples=args.samples,
        sample_count=args.sample_count,
        latency=LatencyPlan() if args.source is not None else None,
    )
    if args.json:
        _print_json(out, {"report": report.model_dump(mode="json")})
        return 0
    if args.source is None:
        out.write(
            f"ok: the file matches its manifest, loads and runs on {report.samples} samples\n"
        )
    else:
        cosine, top1, timing = _fidelity_cells(report)
        out.write(
            f"ok: {report.samples} {report.samples_origin} samples, cosine {cosine}, top-1 {top1}, "
            f"p50/p95 {timing} ms\n"
        )
    return 0


COMMANDS = {
    "build": _cmd_build,
    "profiles": _cmd_profiles,
    "inspect": _cmd_inspect,
    "validate": _cmd_validate,
    "keygen": _cmd_keygen,
    "sign": _cmd_sign,
    "publish": _cmd_publish,
    "distill": _cmd_distill,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = (
        logging.WARNING
        if args.verbose == 0
        else logging.INFO
        if args.verbose == 1
        else logging.DEBUG
    )
    logging.basicConfig(level=level, format=f"{PROG}: %(levelname)s: %(message)s")
    if args.verbose < 2:
        for noisy in ("tf2onnx", "absl", "h5py"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    use_json = bool(getattr(args, "json", False))
    with _reserved_stdout(use_json) as out:
        try:
            return COMMANDS[args.command](args, out)
        except ConversionError as exc:
            if use_json:
                _print_json(out, {"error": exc.as_json()})
            print(f"{PROG}: error: {exc.message}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except Exception:
            logger.exception("unexpected failure")
            return 1


if __name__ == "__main__":
    sys.exit(main())
