"""Device profiles: what to build for a class of device, and how faithful it must be.

A profile is a YAML file. The built-in ones live in ``converters/profiles/``; users add their own
as files (``--profile path/to/edge.yaml``) or in folders named by ``--profile-dir`` or
``HYBRID_CONVERT_PROFILE_DIRS`` (``os.pathsep``-separated), whose profiles are found by name and
shadow built-ins of the same name. A user profile may start from another with ``extends: NAME``
and change only what differs (a file in a profile folder that shadows a built-in may extend
the built-in of its own name)::

    extends: rpi4-litert-int8
    name: rpi4-litert-int8-strict
    validation: {min_top1_agreement: 0.99}

``validation`` overrides the per-precision defaults (:data:`DEFAULT_THRESHOLDS`) field by field;
``null`` turns a gate off. ``int8_io`` (full-int8 TFLite only) chooses float32 or int8 for the
inputs and for each output around the int8 graph: ``int8_io: float`` for both, or
``int8_io: {inputs: float, outputs: {logits: int8, probabilities: float}}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protocols import ArtifactFormat, DeviceIdError, Precision, Thresholds, validate_device_id

from .errors import ProfileError

__all__ = [
    "BUILTIN_DIR",
    "DEFAULT_THRESHOLDS",
    "PROFILE_DIRS_ENV",
    "SUPPORTED_PRECISIONS",
    "BatchRange",
    "DeviceProfile",
    "Int8IO",
    "ProfileEntry",
    "available_profiles",
    "load_profile",
    "load_profiles",
    "profile_dirs",
]

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).with_name("profiles")
PROFILE_DIRS_ENV = "HYBRID_CONVERT_PROFILE_DIRS"
_SUFFIXES = (".yaml", ".yml")

SUPPORTED_PRECISIONS: dict[str, tuple[str, ...]] = {
    "tflite": ("fp32", "fp16", "int8-dynamic", "int8"),
    "onnx": ("fp32", "fp16"),
    "tensorrt": ("fp32", "fp16", "int8"),
}

DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(min_cosine_similarity=0.9999, min_top1_agreement=0.99),
    "fp16": Thresholds(min_cosine_similarity=0.999, min_top1_agreement=0.98),
    "int8-dynamic": Thresholds(min_cosine_similarity=0.99, min_top1_agreement=0.95),
    "int8": Thresholds(min_cosine_similarity=0.98, min_top1_agreement=0.93),
}
"""Gates per precision: cosine similarity and top-1 agreement, which do not depend on the scale
of the outputs. Absolute errors are reported always and gated where a profile sets them."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchRange(_Strict):
    """Batch sizes a TensorRT plan accepts (its optimization profile); ``opt`` is tuned for."""

    min: Annotated[int, Field(ge=1)] = 1
    opt: Annotated[int, Field(ge=1)] = 1
    max: Annotated[int, Field(ge=1)] = 32

    @model_validator(mode="after")
    def _ordered(self) -> BatchRange:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"need min <= opt <= max, got {self.min}, {self.opt}, {self.max}")
        return self


IOType = Literal["int8", "float"]


class Int8IO(_Strict):
    """The tensor types around a full-int8 TFLite graph. ``int8`` hands the device quantized
    tensors (it quantizes and dequantizes with the tensors' scale and zero point); ``float``
    keeps float32 at the edges, LiteRT quantizing inputs and dequantizing outputs inside the
    model, so a probability near 1/1000 is not rounded to a step of 1/256."""

    inputs: IOType = "int8"
    outputs: IOType | dict[str, IOType] = "int8"
    """One type for every output, or one per output name (the source's names); outputs not
    named stay ``int8``."""
    float_ops: tuple[Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]*$")], ...] = ("SOFTMAX",)
    """TFLite operators kept in float32 when any output is float (fed by dequantized int8), so
    a softmax over many classes is not rounded to steps of 1/256; ``[]`` quantizes them too."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"inputs": value, "outputs": value}
        return value

    def output_type(self, name: str) -> IOType:
        if isinstance(self.outputs, str):
            return self.outputs
        return self.outputs.get(name, "int8")

    @property
    def is_default(self) -> bool:
        return self.inputs == "int8" and all(
            t == "int8"
            for t in ([self.outputs] if isinstance(self.outputs, str) else self.outputs.values())
        )


class DeviceProfile(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    description: str = ""
    device_class: str
    """The fleet's device class (``rpi4``); artifacts are announced to it."""
    format: ArtifactFormat
    precision: Precision
    threads: Annotated[int, Field(ge=1, le=256)] = 1
    """Threads the runtime should use on the device; validation latency is measured with them."""
    input_layout: Literal["NHWC", "NCHW"] | None = None
    """Layout of 4-D inputs the artifact takes; ``None`` keeps the source's. A different layout
    adds a transpose in front of the model."""
    max_size_bytes: Annotated[int, Field(gt=0)] | None = None
    """A larger artifact fails the build."""
    max_latency_ms: Annotated[float, Field(gt=0)] | None = None
    """A p95 host latency (batch 1) above this fails the build. Set it only for profiles built on
    the kind of machine they target: the host is not the device."""
    opset: Annotated[int, Field(ge=11, le=23)] = 17
    """ONNX opset for TensorFlow sources (ONNX and TensorRT targets)."""
    batch: BatchRange = Field(default_factory=BatchRange)
    workspace_bytes: Annotated[int, Field(gt=0)] = 1 << 30
    """TensorRT builder workspace."""
    calibration_samples: Annotated[int, Field(ge=1, le=100_000)] = 128
    """Samples used for int8 calibration (generated when no calibration file is given)."""
    validation: Thresholds = Field(default_factory=Thresholds)
    """Overrides of :data:`DEFAULT_THRESHOLDS` for this precision; only the fields given count."""
    int8_io: Int8IO = Field(default_factory=Int8IO)
    """Input and output types of a full-int8 TFLite artifact (int8 by default)."""

    @field_validator("device_class")
    @classmethod
    def _device_class(cls, value: str) -> str:
        try:
            return validate_device_id(value)
        except DeviceIdError as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _supported(self) -> DeviceProfile:
        allowed = SUPPORTED_PRECISIONS[self.format]
        if self.precision not in allowed:
            raise ValueError(
                f"format {self.format} has no precision {self.precision!r}; "
                f"choose one of {', '.join(allowed)}"
            )
        if "int8_io" in self.model_fields_set and not (
            self.format == "tflite" and self.precision == "int8"
        ):
            raise ValueError(
                "int8_io applies to full-int8 TFLite profiles only (format tflite, precision "
                f"int8), not {self.format} {self.precision}"
            )
        return self

    @property
    def thresholds(self) -> Thresholds:
        """The per-precision defaults with this profile's overrides applied."""
        given = {key: getattr(self.validation, key) for key in self.validation.model_fields_set}
        return DEFAULT_THRESHOLDS[self.precision].model_copy(update=given)


@dataclass(frozen=True, kw_only=True)
class ProfileEntry:
    name: str
    path: Path
    builtin: bool


def profile_dirs(extra: Iterable[Path] = ()) -> list[Path]:
    """User profile folders: those given, then those in ``HYBRID_CONVERT_PROFILE_DIRS``."""
    dirs = list(extra)
    env = os.environ.get(PROFILE_DIRS_ENV, "")
    dirs += [Path(part) for part in env.split(os.pathsep) if part]
    return dirs


def _yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in _SUFFIXES and p.is_file())


def available_profiles(dirs: Iterable[Path] = ()) -> dict[str, ProfileEntry]:
    """Every profile found by name: built-ins, shadowed by user folders in order (first wins)."""
    found: dict[str, ProfileEntry] = {}
    for folder in reversed(profile_dirs(dirs)):
        for path in _yaml_files(folder):
            found[path.stem] = ProfileEntry(name=path.stem, path=path, builtin=False)
    for path in _yaml_files(BUILTIN_DIR):
        found.setdefault(path.stem, ProfileEntry(name=path.stem, path=path, builtin=True))
    return dict(sorted(found.items()))


def _is_path(ref: str | Path) -> bool:
    text = str(ref)
    return isinstance(ref, Path) or text.endswith(_SUFFIXES) or os.sep in text


def load_profile(ref: str | Path, *, dirs: Iterable[Path] = ()) -> DeviceProfile:
    """A profile by name (user folders, then built-ins) or by file path."""
    dirs = list(dirs)
    if _is_path(ref):
        return _from_file(Path(ref), dirs, seen=())
    entry = available_profiles(dirs).get(str(ref))
    if entry is None:
        known = ", ".join(available_profiles(dirs))
        raise ProfileError(
            f"unknown profile {str(ref)!r}; known profiles: {known} "
            "(or give a path to a YAML profile file)"
        )
    return _from_file(entry.path, dirs, seen=())


def load_profiles(refs: Iterable[str | Path], *, dirs: Iterable[Path] = ()) -> list[DeviceProfile]:
    """Several profiles; every one is checked before any work starts. Names must be unique."""
    dirs = list(dirs)
    profiles = [load_profile(ref, dirs=dirs) for ref in refs]
    if not profiles:
        raise ProfileError("name at least one profile (--profile); see `model-convert profiles`")
    names = [p.name for p in profiles]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ProfileError(f"profile named more than once: {', '.join(repeated)}")
    return profiles


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"profile file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ProfileError(f"profile file {path} cannot be read: {exc}") from exc
    if not isinstance(raw, dict):
        raise ProfileError(f"profile file {path}: expected a mapping of settings at the top level")
    return raw


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _raw_with_bases(path: Path, dirs: list[Path], seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ProfileError(f"profiles extend each other in a loop: {chain}")
    raw = _read_yaml(path)
    raw.setdefault("name", path.stem)
    base_ref = raw.pop("extends", None)
    if base_ref is None:
        return raw
    if not isinstance(base_ref, str):
        raise ProfileError(f"profile file {path}: 'extends' must name one profile")
    entries = available_profiles(dirs)
    if _is_path(base_ref):
        base_path: Path | None = path.parent / base_ref
    elif base_ref in entries and entries[base_ref].path.resolve() != path.resolve():
        base_path = entries[base_ref].path
    elif (BUILTIN_DIR / f"{base_ref}.yaml").is_file():
        base_path = BUILTIN_DIR / f"{base_ref}.yaml"  # a user file that shadows the built-in
    else:
        base_path = None
    if base_path is None:
        raise ProfileError(
            f"profile file {path} extends unknown profile {base_ref!r}; "
            f"known profiles: {', '.join(entries)}"
        )
    base = _raw_with_bases(base_path, dirs, (*seen, path.resolve()))
    base.pop("name", None)
    base.pop("description", None)
    return _merge(base, raw)


def _from_file(path: Path, dirs: list[Path], seen: tuple[Path, ...]) -> DeviceProfile:
    raw = _raw_with_bases(path, dirs, seen)
    try:
        return DeviceProfile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ProfileError(f"profile file {path}: {problems}") from None
