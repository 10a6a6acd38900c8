"""Errors of the converter. Each carries the ``model-convert`` exit code it ends with.

    ConversionError                  exit 4: a converter failed on a readable source
     ├── ProfileError                exit 2: unknown profile, a bad profile file, or a
     │                               format/precision/source combination that cannot be built
     ├── CalibrationError            exit 2: calibration or sample data that does not fit the
     │                               model's inputs (names, shapes, dtypes), or cannot be read
     ├── SourceError                 exit 3: a source that is missing, corrupt or of no known kind
     ├── ArtifactError               exit 3: an artifact folder without a readable manifest or file
     ├── TargetUnavailableError      exit 6: the tool a target needs is not installed (TensorRT,
     │                               onnx2tf), or cannot convert this model (onnx2tf without a
     │                               converter for one of its operators); the message says
     │                               what to install or what it could not convert
     ├── ValidationFailedError       exit 5: an artifact missed its fidelity, size or latency
     │                               gates; ``reports`` holds every profile's report
     ├── PublishError                exit 7: the hub refused a release (converters.publish)
     └── DistillationRefusedError    exit 8: a distilled model missed a gate (converters.distill)

Third-party failures (TensorFlow, tf2onnx, onnx, ONNX Runtime, LiteRT, TensorRT) are wrapped at
the boundary (``raise ConversionError(...) from exc``), so a caller sees one of these, with a
message that names the profile or file, never a bare library traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocols import ValidationReport

__all__ = [
    "EXIT_CODES",
    "ArtifactError",
    "CalibrationError",
    "ConversionError",
    "ProfileError",
    "SourceError",
    "TargetUnavailableError",
    "ValidationFailedError",
]


class ConversionError(Exception):
    """Root of the converter's errors; ``str(err)`` is a message fit for a user."""

    exit_code: int = 4

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def as_json(self) -> dict[str, Any]:
        """What ``--json`` output and conversion jobs report of the failure."""
        return {"kind": type(self).__name__, "message": self.message, "exit_code": self.exit_code}


class ProfileError(ConversionError):
    exit_code = 2


class CalibrationError(ConversionError):
    exit_code = 2


class SourceError(ConversionError):
    exit_code = 3


class ArtifactError(ConversionError):
    exit_code = 3


class TargetUnavailableError(ConversionError):
    exit_code = 6


class ValidationFailedError(ConversionError):
    exit_code = 5

    def __init__(self, message: str, *, reports: Mapping[str, ValidationReport]) -> None:
        super().__init__(message)
        self.reports = dict(reports)
        """Profile name -> its report, for every profile validated (passed or not)."""

    def as_json(self) -> dict[str, Any]:
        return {
            **super().as_json(),
            "reports": {k: v.model_dump(mode="json") for k, v in self.reports.items()},
        }


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (a bug: please report it with the log)",
    2: "usage or configuration: bad flags, unknown or invalid profile, calibration or sample "
    "data that does not fit the model",
    3: "source or artifact: missing, corrupt or of an unsupported kind",
    4: "conversion failed",
    5: "validation gate failed: an artifact missed its thresholds (nothing was written)",
    6: "target unavailable: a tool the profile needs is not installed, or cannot convert this "
    "model (the message says which)",
    7: "publish failed: the hub refused the release or could not be reached",
    8: "distillation refused: the distilled model missed a gate (no model was written)",
    130: "interrupted",
}
