"""Names the wire contract shares: models, versions, and the file an artifact of each format has.

Every process checks a name against these patterns before it uses it as a topic level, a URL
segment or a folder name: one character class (``A-Z a-z 0-9 _ . -``), a letter or digit first
(so never ``.`` or ``..``), and a length bound. Model names allow 128 characters, versions 64.

A request id is the caller's own string, so it is freer: any Unicode text of at most
:data:`REQUEST_ID_MAX_BYTES` bytes in UTF-8, without control characters. It travels as MQTT
Correlation Data, as an outbox key and (percent-encoded) in a ``Location`` header, and all three
take such an id as it is.
"""

from __future__ import annotations

import re
from typing import Final, Literal, get_args

from .errors import MessageError

__all__ = [
    "ARTIFACT_FILES",
    "MODEL_NAME",
    "MODEL_NAME_PATTERN",
    "REQUEST_ID_MAX_BYTES",
    "VERSION",
    "VERSION_PATTERN",
    "ArtifactFormat",
    "artifact_file",
    "check_request_id",
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


REQUEST_ID_MAX_BYTES: Final = 256
"""The longest request id, in UTF-8 bytes (MQTT Correlation Data holds at most 65,535)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_request_id(value: str) -> str:
    """``value`` if it may be a request id, else :class:`MessageError` (400) saying why."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise MessageError(
            "request id is not valid Unicode text (it holds a lone surrogate)", location="id"
        ) from None
    if size > REQUEST_ID_MAX_BYTES:
        raise MessageError(
            f"request id is {size} bytes in UTF-8; the limit is {REQUEST_ID_MAX_BYTES}",
            location="id",
        )
    found = _CONTROL.search(value)
    if found is not None:
        raise MessageError(
            f"request id holds the control character {found.group()!r} at {found.start()}; "
            "ids are text without control characters",
            location="id",
        )
    return value
