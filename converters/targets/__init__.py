"""Targets: one module per artifact format, chosen by name and imported only when used.

Each module has ``convert(request: TargetRequest) -> TargetResult``, which writes the artifact
to ``request.output`` and wraps every failure of the libraries it drives in a
:class:`~converters.errors.ConversionError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..profiles import DeviceProfile
    from ..samples import SampleSet
    from ..sources import Source

__all__ = ["TARGETS", "TargetRequest", "TargetResult", "converter_for"]

TARGETS: dict[str, str] = {
    "tflite": "converters.targets.tflite:convert",
    "onnx": "converters.targets.onnx:convert",
    "tensorrt": "converters.targets.tensorrt:convert",
}
"""Format -> ``module:function``."""


@dataclass(frozen=True, kw_only=True)
class TargetRequest:
    source: Source
    profile: DeviceProfile
    output: Path
    """Where to write the artifact (inside the build's staging folder)."""
    work_dir: Path
    """Scratch space for this build, shared by its profiles."""
    calibration: SampleSet | None
    """Calibration data in the source's layout, for the precisions that need it."""
    perms: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Input name -> transpose from the source's layout to the one the profile asks for."""


@dataclass(frozen=True, kw_only=True)
class TargetResult:
    perms: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """The transposes the artifact's inputs actually carry relative to the source's."""
    tools: Mapping[str, str] = field(default_factory=dict)
    """Versions of the converters used, beyond the common libraries."""
    notes: tuple[str, ...] = ()


def converter_for(format_name: str) -> Callable[[TargetRequest], TargetResult]:
    module_name, _, attr = TARGETS[format_name].partition(":")
    function: Callable[[TargetRequest], TargetResult] = getattr(
        importlib.import_module(module_name), attr
    )
    return function
