"""What a device checks in a release before it downloads a byte: signatures, then the rest.

Order matters: the signatures are checked on the raw ``signed`` object first, and only a release
that enough distinct trusted keys signed is parsed and looked at further. Each rejection names
one :class:`Reason`, which is what the status topic and the metric report.

    Reason           stops
    malformed        junk on the topic (endless data: announcements over 4 MiB are not read)
    signature        arbitrary artifacts: unsigned, unknown keys, too few distinct keys, any
                     change to the signed manifest (sha256, size, name, version, class...)
    expired          freeze attacks: an old release replayed after its expiry
    device_class     a release built for another kind of device
    rollback         a version not above the highest installed one (persisted across restarts)
    failed_before    a version that failed its smoke test or health window here already
    format           an artifact this agent cannot run (not ``tflite``)
    size             more bytes than the device allows, or than the release signed (endless data)
    sha256           a download that is not the signed file
    smoke_test       a model that does not load, or gives other outputs than the release says
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from protocols import SignedRelease, parse_release_version, release_signing_bytes

from ..errors import AgentError, ConfigError

__all__ = [
    "Reason",
    "RejectedError",
    "TrustedKeys",
    "check_release",
    "file_sha256",
    "verify_signatures",
]

CHUNK_BYTES = 1 << 20


class Reason(str, enum.Enum):
    MALFORMED = "malformed"
    SIGNATURE = "signature"
    EXPIRED = "expired"
    DEVICE_CLASS = "device_class"
    ROLLBACK = "rollback"
    FAILED_BEFORE = "failed_before"
    FORMAT = "format"
    SIZE = "size"
    SHA256 = "sha256"
    SMOKE_TEST = "smoke_test"


class RejectedError(AgentError):
    """A release or its download the agent will not install; ``reason`` says which check."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class TrustedKeys:
    """Ed25519 public keys by key id (sha256 of the raw key)."""

    keys: Mapping[str, Ed25519PublicKey]

    @classmethod
    def load(cls, entries: Sequence[str], *, base_dir: Path | None = None) -> TrustedKeys:
        """Each entry is the raw key in base64 (``model-convert keygen`` prints it) or the path
        of a PEM public key file."""
        keys: dict[str, Ed25519PublicKey] = {}
        for entry in entries:
            key = _parse_key(entry, base_dir)
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            keys[hashlib.sha256(raw).hexdigest()] = key
        return cls(keys)


def _parse_key(entry: str, base_dir: Path | None) -> Ed25519PublicKey:
    text = entry.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == 32:
        return Ed25519PublicKey.from_public_bytes(raw)
    path = Path(text).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"trusted key {entry!r} is neither a base64 Ed25519 key nor a readable file"
        ) from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"trusted key file {path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"trusted key file {path} holds a {type(key).__name__}, not Ed25519")
    return key


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_signatures(raw: Mapping[str, Any], keys: TrustedKeys, threshold: int) -> int:
    """The number of distinct trusted keys whose signature over ``raw["signed"]`` is valid;
    :class:`RejectedError` (signature) below ``threshold``."""
    signed = raw.get("signed")
    signatures = raw.get("signatures")
    if not isinstance(signed, dict) or not isinstance(signatures, list):
        raise RejectedError(Reason.MALFORMED, "a release needs 'signed' and 'signatures'")
    try:
        message = release_signing_bytes(signed)
    except (TypeError, ValueError) as exc:
        raise RejectedError(Reason.MALFORMED, f"the signed part is not JSON data: {exc}") from exc
    valid: set[str] = set()
    for entry in signatures[:16]:
        if not isinstance(entry, dict):
            continue
        keyid, sig = entry.get("keyid"), entry.get("sig")
        key = keys.keys.get(keyid) if isinstance(keyid, str) else None
        if key is None or keyid in valid or not isinstance(sig, str):
            continue
        try:
            key.verify(base64.b64decode(sig, validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError):
            continue
        valid.add(str(keyid))
    if len(valid) < threshold:
        raise RejectedError(
            Reason.SIGNATURE,
            f"{len(valid)} valid signature(s) by distinct trusted keys; {threshold} needed",
        )
    return len(valid)


def check_release(
    raw: Mapping[str, Any],
    *,
    keys: TrustedKeys,
    threshold: int,
    device_class: str,
    highest_installed: int,
    failed: Sequence[int] = (),
    max_size_bytes: int,
    now: dt.datetime | None = None,
) -> SignedRelease:
    """The release, if this device may install it; else :class:`RejectedError`."""
    verify_signatures(raw, keys, threshold)
    try:
        release = SignedRelease.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RejectedError(Reason.MALFORMED, f"invalid release: {where}: {first['msg']}") from None
    info = release.signed
    manifest = info.manifest
    label = f"{manifest.name} {manifest.version}"
    now = now or dt.datetime.now(dt.timezone.utc)
    if info.expires_at <= now:
        raise RejectedError(
            Reason.EXPIRED, f"{label}: the release expired at {info.expires_at.isoformat()}"
        )
    if manifest.device_class != device_class:
        raise RejectedError(
            Reason.DEVICE_CLASS,
            f"{label} is for device class {manifest.device_class!r}; this is {device_class!r}",
        )
    version = parse_release_version(manifest.version)
    if version in failed:
        raise RejectedError(Reason.FAILED_BEFORE, f"{label} failed here before")
    if version <= highest_installed:
        raise RejectedError(
            Reason.ROLLBACK, f"{label} is not above the installed version {highest_installed}"
        )
    if manifest.format != "tflite":
        raise RejectedError(Reason.FORMAT, f"{label} is {manifest.format}; this agent runs tflite")
    if manifest.size_bytes > max_size_bytes:
        raise RejectedError(
            Reason.SIZE, f"{label} has {manifest.size_bytes} bytes; the limit is {max_size_bytes}"
        )
    return release
