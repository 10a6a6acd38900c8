"""``<repo>/<model>/config.yaml``: what a model is and how the hub serves it.

Dimensions follow Triton: with ``max_batch_size > 0`` the first dimension of every input and
output is the batch and ``dims`` leave it out; with ``0`` the model takes tensors as they are.
Inputs and outputs may be left out; they are then read from the model file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocols import Datatype

from .backends.base import BackendName
from .errors import ConfigError

__all__ = [
    "CaptureConfig",
    "DynamicBatching",
    "ModelConfig",
    "ResponseCache",
    "TensorConfig",
    "VersionPolicy",
    "load_model_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    name: Annotated[str, Field(min_length=1)]
    datatype: Datatype
    dims: list[Annotated[int, Field(ge=-1)]]
    """Shape without the batch dimension (when batching); -1 for a variable dimension."""


class DynamicBatching(_Strict):
    max_queue_delay_us: Annotated[int, Field(ge=0, le=10_000_000)] = 500
    """How long the first request of a batch may wait for others."""
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    """Sizes worth dispatching at once, without waiting for the delay."""
    max_queue_size: Annotated[int, Field(ge=1)] = 1024
    """Requests waiting beyond this are refused with 503: the queue never grows without bound."""
    default_timeout_us: Annotated[int, Field(ge=0)] = 0
    """Deadline in the queue when the request names none; 0 means none."""


class VersionPolicy(_Strict):
    """Which numeric version folders to serve: the latest N, all, or named ones (Triton's policy)."""

    latest: Annotated[int, Field(ge=1)] | None = None
    all: bool = False
    specific: list[Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _one_choice(self) -> VersionPolicy:
        chosen = sum([self.latest is not None, self.all, self.specific is not None])
        if chosen > 1:
            raise ValueError("choose one of latest, all or specific")
        return self

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-(self.latest or 1) :]


class ResponseCache(_Strict):
    enabled: bool = False
    max_entries: Annotated[int, Field(ge=1)] = 1024


class CaptureConfig(_Strict):
    """Keep the requests devices hand over (fallbacks) with the answers, as dataset shards
    (docs/capture.md). Off unless the model's config has a ``capture`` section."""

    sample_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """Share of the fallback requests kept, drawn at random per request."""
    max_bytes: Annotated[int, Field(gt=0)] = 256 * 1024 * 1024
    """The model's shards together stay under this; the oldest go first."""
    retention_s: Annotated[float, Field(gt=0)] = 7 * 86_400.0
    """Shards older than this are deleted."""
    shard_records: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    """Records per shard: a shard is written once this many are buffered..."""
    flush_interval_s: Annotated[float, Field(gt=0)] = 60.0
    """...or once its oldest buffered record is this old."""


class ModelConfig(_Strict):
    backend: BackendName
    max_batch_size: Annotated[int, Field(ge=0)] = 0
    dynamic_batching: DynamicBatching | None = None
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    labels: list[str] | str | None = None
    """Class names for a classifier output, inline or a file next to config.yaml."""
    response_cache: ResponseCache = Field(default_factory=ResponseCache)
    instance_count: Annotated[int, Field(ge=1, le=64)] = 1
    """Batches that may run at once."""
    intra_op_threads: Annotated[int, Field(ge=0)] = 0
    inter_op_threads: Annotated[int, Field(ge=0)] = 0
    device: Literal["auto", "cpu", "gpu"] = "auto"
    parameters: dict[str, Any] = Field(default_factory=dict)
    capture: CaptureConfig | None = None
    """Keep fallback requests and their answers for distillation; ``None``: keep nothing."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.dynamic_batching is not None:
            if self.max_batch_size == 0:
                raise ValueError("dynamic_batching needs max_batch_size > 0")
            too_big = [
                s for s in self.dynamic_batching.preferred_batch_sizes if s > self.max_batch_size
            ]
            if too_big:
                raise ValueError(
                    f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}"
                )
        return self


def load_model_config(path: Path) -> ModelConfig:
    """Read and validate one config.yaml; :class:`ConfigError` says which field is wrong."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
