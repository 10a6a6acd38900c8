"""Conversion jobs run in a worker process (the hub's conversion service).

:func:`run_job` takes a picklable :class:`JobSpec` and returns plain JSON-able data, never an
exception object, so nothing of the worker's libraries has to be unpickled by the caller. An
uploaded archive (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``) may hold, beside the model,
``calibration.npz`` and ``samples.npz`` at its top level; they are used as the CLI's
``--calibration`` and ``--samples``. Progress is written to ``progress_file`` as JSON
(``{"fraction": ..., "step": ...}``), replaced atomically, for the service to read.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConversionError

__all__ = ["CALIBRATION_MEMBER", "SAMPLES_MEMBER", "JobSpec", "init_worker", "run_job"]

logger = logging.getLogger(__name__)

CALIBRATION_MEMBER = "calibration.npz"
SAMPLES_MEMBER = "samples.npz"


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    upload: Path
    """The uploaded model file or archive."""
    profiles: tuple[str, ...]
    out_dir: Path
    """Where the artifacts go (``out_dir/<profile>/``); must not exist yet."""
    work_dir: Path
    """Scratch space (archives are unpacked here)."""
    name: str
    version: str
    progress_file: Path


def init_worker(log_level: int) -> None:
    """Process initializer: the worker's log lines go to stderr, like the hub's."""
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s"
    )
    for noisy in ("tf2onnx", "absl"):
        logging.getLogger(noisy).setLevel(max(log_level, logging.WARNING))


def _write_progress(path: Path, step: str, fraction: float) -> None:
    """Best effort: progress that cannot be written never fails the job."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(json.dumps({"step": step, "fraction": round(fraction, 4)}))
        os.replace(temporary, path)
    except OSError as exc:
        logger.debug("progress not written: %s", exc)


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Build one job; ``{"ok": true, "artifacts": [...], "warnings": [...]}`` or
    ``{"ok": false, "error": {"kind", "message", "exit_code", "reports"?}}``."""
    from .build import BuildRequest, build
    from .sources import ARCHIVE_SUFFIXES, extract_archive, find_model

    _write_progress(spec.progress_file, "starting", 0.0)
    try:
        source = spec.upload
        calibration = samples = None
        if spec.upload.name.lower().endswith(ARCHIVE_SUFFIXES):
            unpacked = spec.work_dir / "source"
            unpacked.mkdir(parents=True)
            extract_archive(spec.upload, unpacked)
            if (unpacked / CALIBRATION_MEMBER).is_file():
                calibration = unpacked / CALIBRATION_MEMBER
            if (unpacked / SAMPLES_MEMBER).is_file():
                samples = unpacked / SAMPLES_MEMBER
            source = find_model(unpacked, spec.upload)
        result = build(
            BuildRequest(
                source=source,
                profiles=spec.profiles,
                out_dir=spec.out_dir,
                calibration=calibration,
                samples=samples,
                name=spec.name,
                version=spec.version,
            ),
            progress=lambda step, fraction: _write_progress(spec.progress_file, step, fraction),
        )
    except ConversionError as exc:
        return {"ok": False, "error": exc.as_json()}
    except Exception as exc:
        logger.exception("conversion job failed unexpectedly")
        return {
            "ok": False,
            "error": {"kind": "InternalError", "message": f"{type(exc).__name__}: {exc}"},
        }
    return {
        "ok": True,
        "artifacts": [
            {
                "profile": a.profile.name,
                "folder": a.directory.name,
                "manifest": a.manifest.model_dump(mode="json"),
            }
            for a in result.artifacts
        ],
        "warnings": list(result.warnings),
    }
