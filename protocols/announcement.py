"""Signed model releases and the fleet announcements that carry them.

A release is what a publisher vouches for: one artifact's manifest (name, version, device class,
sha256, size, smoke test...), an expiry and a latency budget, signed with Ed25519::

    {"signed": {"type": "model-release", "manifest": {...}, "expires_at": "...", ...},
     "signatures": [{"keyid": "<sha256 of the raw public key>", "sig": "<base64>"}]}

The signatures cover :func:`release_signing_bytes` of the ``signed`` object *as received*
(canonical JSON of the parsed JSON, not of a pydantic model), so a reader whose schema has more
or fewer defaults still checks the publisher's exact bytes. Verify first, validate second.

The hub keeps the newest release of every model of a device class and announces them together,
retained, on ``hybrid/v1/fleet/{device_class}/models`` as a :class:`ModelAnnouncement`. The
announcement's own fields are not signed: a device trusts only what is inside each release.

This module does no cryptography (``protocols`` stays free of it); signing lives in
``converters.signing`` and checking in ``edge_agent.updater``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from .manifest import ArtifactManifest, SmokeSample, SmokeTensor, SmokeTest, canonical_json
from .topics import validate_device_id

__all__ = [
    "ANNOUNCEMENT_MAX_BYTES",
    "RELEASE_FILENAME",
    "RELEASE_TYPE",
    "KeySignature",
    "ModelAnnouncement",
    "ReleaseInfo",
    "SignedRelease",
    "SmokeSample",
    "SmokeTensor",
    "SmokeTest",
    "parse_release_version",
    "release_signing_bytes",
]

RELEASE_TYPE: Literal["model-release"] = "model-release"
RELEASE_FILENAME = "release.json"
"""The signed release, stored beside ``manifest.json`` in the hub's artifact store."""
ANNOUNCEMENT_MAX_BYTES = 4 * 1024 * 1024
"""A device drops bigger announcements unread."""

KeyId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ReleaseInfo(_Part):
    """The signed part of a release."""

    type: Literal["model-release"] = RELEASE_TYPE
    manifest: ArtifactManifest
    expires_at: dt.datetime
    """Devices refuse the release after this (bounds how long an old one can be replayed)."""
    signed_at: dt.datetime
    latency_budget_ms: Annotated[float, Field(gt=0)] | None = None
    """Run time per request the model must keep in the device's health window; devices use
    their own default when unset."""

    @field_validator("expires_at", "signed_at")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("times must carry a time zone")
        return value.astimezone(dt.timezone.utc)

    @field_validator("manifest")
    @classmethod
    def _numeric_version(cls, value: ArtifactManifest) -> ArtifactManifest:
        parse_release_version(value.version)
        return value


class KeySignature(_Part):
    keyid: KeyId
    """sha256 (hex) of the signer's raw 32-byte Ed25519 public key."""
    sig: Annotated[str, Field(min_length=1, max_length=256)]
    """Base64 of the 64-byte Ed25519 signature."""


class SignedRelease(_Part):
    signed: ReleaseInfo
    signatures: Annotated[list[KeySignature], Field(min_length=1, max_length=16)]

    @property
    def manifest(self) -> ArtifactManifest:
        return self.signed.manifest

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


class ModelAnnouncement(BaseModel):
    """Retained on ``hybrid/v1/fleet/{device_class}/models``: the newest release of each model
    of the class. ``releases`` stay raw JSON here; a device verifies each before parsing it."""

    model_config = ConfigDict(extra="ignore")

    device_class: StrictStr
    releases: Annotated[list[dict[str, Any]], Field(max_length=256)]
    published_at: dt.datetime | None = None

    @field_validator("device_class")
    @classmethod
    def _device_class(cls, value: str) -> str:
        return validate_device_id(value, what="device class")


def release_signing_bytes(signed: Mapping[str, Any] | ReleaseInfo) -> bytes:
    """What a release signature covers: canonical JSON of the ``signed`` object."""
    if isinstance(signed, ReleaseInfo):
        return canonical_json(signed.model_dump(mode="json"))
    return canonical_json(dict(signed))


def parse_release_version(version: str) -> int:
    """Release versions are integers (the hub stores ``<name>/<version>/``); devices take only a
    higher one than they have."""
    if not version.isdigit() or len(version) > 18:
        raise ValueError(f"release version {version!r} must be a non-negative integer")
    return int(version)
