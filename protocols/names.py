"""Names the wire contract shares: models, versions, and the file an artifact of each format has.

Every process checks a name against these patterns before it uses it as a topic level, a URL
segment or a folder name: one character class (``A-Z a-z 0-9 _ . -``), a letter or digit first
(so never ``.`` or ``..``), and a length bound. Model names allow 128 characters, versions 64.
"""

from __future__ import annotations

import re
from typing import Final, Literal, get_args

__all__ = [
    "ARTIFACT_FILES",
    "MODEL_NAME",
    "MODEL_NAME_PATTERN",
    "VERSION",
    "VERSION_PATTERN",
    "ArtifactFormat",
    "artifact_file",
    "is_model_name",
    "is_version",
]

MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""A model (or artifact, or file) name: safe as one path segment, topic level or URL segment."""

VERSION_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A model version: the same characters as a name, at most 64 of them."""

MODEL_NAME: Final = re.compile(MODEL_NAME_PATTERN)
VERSION: Final = re.compile(VERSION_PATTERN)

ArtifactFormat = Literal["tflite", "onnx", "tensorrt"]
"""The formats the converter writes and the hub and agents serve."""

ARTIFACT_FILES: Final[dict[ArtifactFormat, str]] = {
    "tflite": "model.tflite",
    "onnx": "model.onnx",
    "tensorrt": "model.plan",
}
"""The artifact's file name per format: Triton's default names, which the hub's repository, the
converter's output folders and the agent's model store all use."""

assert set(ARTIFACT_FILES) == set(get_args(ArtifactFormat))


def is_model_name(name: str) -> bool:
    return MODEL_NAME.fullmatch(name) is not None


def is_version(version: str) -> bool:
    return VERSION.fullmatch(version) is not None


def artifact_file(fmt: ArtifactFormat) -> str:
    """``model.tflite``, ``model.onnx`` or ``model.plan``."""
    return ARTIFACT_FILES[fmt]
