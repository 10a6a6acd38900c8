"""Ed25519 keys and signed releases: what ``model-convert keygen``, ``sign`` and ``publish`` use.

A release (:class:`protocols.SignedRelease`) signs an artifact's whole manifest (sha256, size,
name, version, device class, smoke test) together with an expiry, so none of them can be
swapped for another release's (mix-and-match) and an old release stops being accepted once it
expires. Keys are identified by the sha256 of their raw 32-byte public key; a device counts
only distinct trusted keys towards its threshold. More signatures are added by signing a
release file again with another key.

Private keys are PKCS#8 PEM files written with mode 0600; public keys are PEM files, and the
raw key in base64 is what an agent's ``updates.trusted_keys`` takes.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from protocols import (
    MANIFEST_FILENAME,
    RELEASE_FILENAME,
    ArtifactManifest,
    KeySignature,
    ReleaseInfo,
    SignedRelease,
    release_signing_bytes,
)

from .errors import ArtifactError, ConversionError

__all__ = [
    "DEFAULT_EXPIRY_DAYS",
    "KeyPair",
    "SigningError",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "make_release",
    "public_key_base64",
    "sign_artifact",
    "sign_release",
    "verify_signature",
]

logger = logging.getLogger(__name__)

DEFAULT_EXPIRY_DAYS = 30.0


class SigningError(ConversionError):
    """A key that cannot be read or written, or a release that cannot be signed."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True)
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str
    public_base64: str


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 (hex) of the raw public key: the same id on every side for the same key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_key_base64(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def generate_keypair(prefix: Path, *, overwrite: bool = False) -> KeyPair:
    """Write ``<prefix>.key`` (private, 0600) and ``<prefix>.pub`` (public), both PEM."""
    private_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pub")
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise SigningError(f"{private_path} or {public_path} exists already; pass --overwrite")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(private_path, flags, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_pem)
        os.chmod(private_path, 0o600)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise SigningError(f"cannot write the key pair at {prefix}: {exc}") from exc
    public = key.public_key()
    return KeyPair(
        private_path=private_path,
        public_path=public_path,
        key_id=key_id(public),
        public_base64=public_key_base64(public),
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read the private key {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} holds a {type(key).__name__}; releases need an Ed25519 key")
    return key


def make_release(
    manifest: ArtifactManifest,
    *,
    expires_in_s: float = DEFAULT_EXPIRY_DAYS * 86_400,
    latency_budget_ms: float | None = None,
    now: dt.datetime | None = None,
) -> ReleaseInfo:
    """The unsigned part of a release of ``manifest``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        return ReleaseInfo(
            manifest=manifest,
            signed_at=now,
            expires_at=now + dt.timedelta(seconds=expires_in_s),
            latency_budget_ms=latency_budget_ms,
        )
    except ValidationError as exc:
        raise SigningError(
            f"cannot make a release of {manifest.name} {manifest.version}: "
            + "; ".join(str(e["msg"]) for e in exc.errors(include_url=False))
        ) from exc


def sign_release(
    release: ReleaseInfo | SignedRelease, keys: list[Ed25519PrivateKey]
) -> SignedRelease:
    """Sign ``release`` with each key; signatures already there are kept, and a key that has
    signed already is not added twice."""
    if isinstance(release, SignedRelease):
        info, signatures = release.signed, list(release.signatures)
    else:
        info, signatures = release, []
    message = release_signing_bytes(info)
    present = {s.keyid for s in signatures}
    for key in keys:
        keyid = key_id(key.public_key())
        if keyid in present:
            continue
        sig = base64.b64encode(key.sign(message)).decode("ascii")
        signatures.append(KeySignature(keyid=keyid, sig=sig))
        present.add(keyid)
    if not signatures:
        raise SigningError("no key to sign with")
    return SignedRelease(signed=info, signatures=signatures)


def verify_signature(public_key: Ed25519PublicKey, message: bytes, sig_base64: str) -> bool:
    try:
        public_key.verify(base64.b64decode(sig_base64, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_artifact(
    folder: Path,
    keys: list[Ed25519PrivateKey],
    *,
    expires_in_s: float = DEFAULT_EXPIRY_DAYS * 86_400,
    latency_budget_ms: float | None = None,
    resign: bool = False,
) -> SignedRelease:
    """Sign the artifact in ``folder`` and write ``release.json`` beside its manifest.

    The file is checked against the manifest first (a release never vouches for bytes it was
    not made from). An existing ``release.json`` for the same manifest gets the new signatures
    added (a second signer); ``resign`` starts a fresh release (new expiry) instead.
    """
    from .artifact import inspect_artifact

    inspection = inspect_artifact(folder)
    if inspection.problems:
        raise ArtifactError(
            f"{folder}: the file does not match its manifest: " + "; ".join(inspection.problems)
        )
    manifest = inspection.manifest
    release_path = folder / RELEASE_FILENAME
    existing: SignedRelease | None = None
    if release_path.exists() and not resign:
        try:
            existing = SignedRelease.model_validate_json(release_path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise SigningError(f"{release_path} is not a readable release: {exc}") from exc
        if existing.signed.manifest != manifest:
            raise SigningError(
                f"{release_path} was made from another {MANIFEST_FILENAME}; pass --resign"
            )
    base: ReleaseInfo | SignedRelease = existing or make_release(
        manifest, expires_in_s=expires_in_s, latency_budget_ms=latency_budget_ms
    )
    signed = sign_release(base, keys)
    tmp = release_path.with_name(f".{RELEASE_FILENAME}.tmp")
    try:
        tmp.write_text(signed.to_json(), encoding="utf-8")
        tmp.replace(release_path)
    except OSError as exc:
        raise SigningError(f"cannot write {release_path}: {exc}") from exc
    logger.info(
        "signed %s %s (%d signature(s))", manifest.name, manifest.version, len(signed.signatures)
    )
    return signed


def release_json(release: SignedRelease) -> bytes:
    return json.dumps(release.model_dump(mode="json"), sort_keys=True).encode("utf-8")
