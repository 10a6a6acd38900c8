"""The manifest that travels with every converted model artifact.

``model-convert`` writes one ``manifest.json`` next to each artifact; the hub lists and serves
them; devices read them before swapping a model in. It says what the artifact is (format,
precision, the device class it was built for), how to check it (sha256, size), how to feed it
(inputs and outputs with their quantization parameters), where it came from (the source's sha256,
tool and library versions) and how faithful it is to its source (the validation report).

Manifests are signed as :func:`canonical_json` bytes (sorted keys, no whitespace, UTF-8), which
:meth:`ArtifactManifest.signing_bytes` gives; a signature travels beside the manifest, so signing
does not change the manifest's own bytes.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from .datatypes import Datatype
from .names import MODEL_NAME_PATTERN, VERSION_PATTERN, ArtifactFormat
from .topics import validate_device_id

__all__ = [
    "MANIFEST_FILENAME",
    "MANIFEST_SCHEMA_VERSION",
    "ArtifactFormat",
    "ArtifactManifest",
    "CalibrationInfo",
    "LatencyReport",
    "ManifestTensor",
    "OutputFidelity",
    "Precision",
    "QuantizationParameters",
    "SmokeSample",
    "SmokeTensor",
    "SmokeTest",
    "SourceFormat",
    "SourceInfo",
    "Thresholds",
    "ValidationReport",
    "canonical_json",
]

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_FILENAME = "manifest.json"

Precision = Literal["fp32", "fp16", "int8-dynamic", "int8"]
"""``int8-dynamic``: int8 weights, float activations and I/O; ``int8``: integer throughout."""
SourceFormat = Literal["keras", "saved_model", "onnx"]
Origin = Literal["file", "generated"]

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class QuantizationParameters(_Part):
    """``real = (quantized - zero_point) * scale``; one entry per tensor, or per channel along
    ``axis``."""

    scale: list[float]
    zero_point: list[int]
    axis: int | None = None


class ManifestTensor(_Part):
    name: StrictStr
    datatype: Datatype
    """The datatype the artifact itself takes or gives (``INT8`` for a fully quantized model)."""
    shape: list[Annotated[int, Field(ge=-1)]]
    """-1 for a variable dimension (the batch, usually)."""
    layout: Literal["NHWC", "NCHW"] | None = None
    """For 4-D image inputs."""
    quantization: QuantizationParameters | None = None


class SourceInfo(_Part):
    filename: StrictStr
    format: SourceFormat
    sha256: Sha256
    """Of the file, or of a SavedModel folder (see ``model-convert inspect``)."""


class CalibrationInfo(_Part):
    origin: Origin
    """``generated`` means random data: int8 accuracy on real inputs is not known."""
    samples: Annotated[int, Field(ge=0)]
    sha256: Sha256 | None = None


class Thresholds(_Part):
    """The gates an artifact must pass; ``None`` leaves a metric ungated."""

    min_cosine_similarity: Fraction | None = None
    """Mean over samples of the cosine similarity between the artifact's and the source's output."""
    min_top1_agreement: Fraction | None = None
    """Share of samples whose top-1 class matches the source's (classifier outputs only)."""
    max_abs_error: Annotated[float, Field(ge=0)] | None = None
    max_mean_abs_error: Annotated[float, Field(ge=0)] | None = None
    max_rmse: Annotated[float, Field(ge=0)] | None = None


class OutputFidelity(_Part):
    """How far one output of the artifact is from the source's, over the validation samples."""

    name: StrictStr
    max_abs_error: float
    mean_abs_error: float
    rmse: float
    cosine_similarity: float
    """Mean over samples."""
    cosine_similarity_min: float
    top1_agreement: Fraction | None = None
    """``None`` when the output is not a classifier's ``[batch, classes]``."""


class LatencyReport(_Part):
    """Host latency of one batch, measured where the artifact was built (not on the device)."""

    runtime: StrictStr
    batch_size: Annotated[int, Field(ge=1)]
    threads: Annotated[int, Field(ge=1)]
    runs: Annotated[int, Field(ge=1)]
    p50_ms: Annotated[float, Field(ge=0)]
    p95_ms: Annotated[float, Field(ge=0)]


class ValidationReport(_Part):
    passed: bool
    samples: Annotated[int, Field(ge=0)]
    samples_origin: Origin
    thresholds: Thresholds
    outputs: list[OutputFidelity]
    latency: LatencyReport | None = None
    failures: list[StrictStr] = Field(default_factory=list)
    """One line per missed gate, empty when ``passed``."""


SMOKE_MAX_ELEMENTS = 65_536
"""Elements per smoke tensor: enough for a few samples of a small input, no more."""


class SmokeTensor(_Part):
    """A tensor as the device's runtime takes or gives it (float for quantized models too)."""

    datatype: Datatype
    shape: list[Annotated[int, Field(ge=1)]]
    data: list[float] | list[int]

    @field_validator("data")
    @classmethod
    def _size(cls, value: list[float] | list[int]) -> list[float] | list[int]:
        if len(value) > SMOKE_MAX_ELEMENTS:
            raise ValueError(f"a smoke tensor holds at most {SMOKE_MAX_ELEMENTS} elements")
        return value


class SmokeSample(_Part):
    inputs: dict[StrictStr, SmokeTensor]
    outputs: dict[StrictStr, SmokeTensor]
    """What the artifact itself answered where it was built."""


class SmokeTest(_Part):
    """Inputs a device runs a new model on before serving it, and the outputs it must give,
    within ``atol + rtol * |expected|`` per element."""

    samples: Annotated[list[SmokeSample], Field(min_length=1, max_length=16)]
    atol: Annotated[float, Field(ge=0)] = 1e-3
    rtol: Annotated[float, Field(ge=0)] = 1e-3


class ArtifactManifest(_Part):
    schema_version: Literal[1] = 1
    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    profile: Annotated[str, Field(min_length=1)]
    device_class: Annotated[str, Field(min_length=1, max_length=64)]
    format: ArtifactFormat
    precision: Precision
    file: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
    """The artifact's file name, in the same folder as the manifest."""
    sha256: Sha256
    size_bytes: Annotated[int, Field(ge=0)]
    inputs: list[ManifestTensor]
    outputs: list[ManifestTensor]
    threads: Annotated[int, Field(ge=1)] = 1
    """Threads the device profile asks the runtime for."""
    source: SourceInfo
    calibration: CalibrationInfo | None = None
    tools: dict[str, str]
    """Converter and library versions: ``{"hybrid-inference": ..., "tensorflow": ...}``."""
    validation: ValidationReport
    created_at: dt.datetime
    smoke_test: SmokeTest | None = None
    """Sample inputs and the outputs the artifact gave, for a device to check before serving it
    (see docs/updates.md)."""

    @field_validator("device_class")
    @classmethod
    def _device_class(cls, value: str) -> str:
        return validate_device_id(value)

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must carry a time zone")
        return value.astimezone(dt.timezone.utc)

    def to_json(self) -> str:
        """Readable JSON for the ``manifest.json`` file (2-space indent, sorted keys)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    def signing_bytes(self) -> bytes:
        """The bytes a signature covers: :func:`canonical_json` of the whole manifest."""
        return canonical_json(self.model_dump(mode="json"))


def canonical_json(data: Any) -> bytes:
    """JSON with sorted keys, no whitespace, UTF-8 and no NaN or infinity: the same bytes for
    the same data wherever it is made, so they can be signed and checked."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
