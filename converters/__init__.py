"""The converter: device-specific artifacts from one source model, validated.

- :mod:`converters.build`: :func:`build` a source for some device profiles into artifacts, each
  validated against the source and described by a manifest (:class:`protocols.ArtifactManifest`).
- :mod:`converters.profiles`: device profiles (built-in YAML under ``converters/profiles/``, and
  user files).
- :mod:`converters.sources`: ``.keras``, SavedModel and ``.onnx`` sources.
- :mod:`converters.targets`: one module per artifact format (TFLite, ONNX, TensorRT).
- :mod:`converters.validation`, :mod:`converters.runners`: fidelity, latency and gates.
- :mod:`converters.artifact`: inspect and validate artifacts already built.
- :mod:`converters.cli`: ``model-convert``; :mod:`converters.jobs`: the hub's worker side.
- :mod:`converters.distill`: ``model-convert distill``, the next edge model fine-tuned on the
  fleet's captured fallbacks, gated against the current one.
- :mod:`converters.errors`: :class:`ConversionError` and its tree.

Importing this package imports no ML library: TensorFlow, tf2onnx, onnx, ONNX Runtime, LiteRT
and TensorRT load when a build or a check needs them.
"""

from .build import BuildRequest, BuildResult, BuiltArtifact, build
from .errors import (
    EXIT_CODES,
    ArtifactError,
    CalibrationError,
    ConversionError,
    ProfileError,
    SourceError,
    TargetUnavailableError,
    ValidationFailedError,
)
from .profiles import DeviceProfile, available_profiles, load_profile, load_profiles

__all__ = [
    "EXIT_CODES",
    "ArtifactError",
    "BuildRequest",
    "BuildResult",
    "BuiltArtifact",
    "CalibrationError",
    "ConversionError",
    "DeviceProfile",
    "ProfileError",
    "SourceError",
    "TargetUnavailableError",
    "ValidationFailedError",
    "available_profiles",
    "build",
    "load_profile",
    "load_profiles",
]
