"""Signed releases: uploads, publishing into the artifact store, and fleet announcements.

    PUT  /v1/uploads/{sha256}   admin; the model file as the raw body, kept only if its sha256
                                is the one named (content-addressed: a repeat is harmless)
    POST /v1/releases           admin; a signed release (protocols.SignedRelease) naming an
                                upload by sha256: stored as <name>/<version>/<profile>/ with
                                the model, manifest.json and release.json, then announced

The hub does not trust or check signatures: devices do (docs/updates.md). It checks what it
can see: the release parses and has not expired, the upload matches the manifest's sha256 and
size, and a version
already stored is never replaced by other bytes (409). Publishing the same artifact again with a
new release (a new expiry, more signatures) replaces only ``release.json``.

Each device class's announcement (:class:`protocols.ModelAnnouncement`) holds the newest
release of every model built for it; it is published retained on
``hybrid/v1/fleet/{device_class}/models`` after each publish and again on every connect of the
MQTT bridge (the broker may have lost it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from protocols import (
    MANIFEST_FILENAME,
    MODEL_NAME,
    RELEASE_FILENAME,
    ErrorResponse,
    ModelAnnouncement,
    SignedRelease,
    fleet_models_topic,
)

from .access import Access
from .artifacts import ArtifactStore, scope_check, store_root
from .errors import BadRequestError, ConflictError, PayloadTooLargeError
from .settings import HubSettings

__all__ = ["Announcer", "ReleaseStore", "router"]

logger = logging.getLogger(__name__)

UPLOADS = "uploads"
RELEASE_MAX_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 1 << 20


class Announcer(Protocol):
    """What publishes retained announcements: the MQTT bridge."""

    def set_retained(self, topic: str, payload: bytes) -> bool: ...


class ReleaseStore:
    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def upload_path(self, sha256: str) -> Path:
        return self.store.ensure() / f".{UPLOADS}" / sha256

    async def receive(self, sha256: str, request: Request, limit_bytes: int) -> int:
        """Stream the body to ``.uploads/<sha256>``; kept only when its digest matches."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BadRequestError("the upload path must name the file's sha256 (64 hex digits)")
        final = self.upload_path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{sha256}.{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as handle:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit_bytes:
                        raise PayloadTooLargeError(f"the upload is over {limit_bytes} bytes")
                    digest.update(chunk)
                    await asyncio.to_thread(handle.write, chunk)
            if digest.hexdigest() != sha256:
                raise BadRequestError(
                    f"the uploaded bytes have sha256 {digest.hexdigest()}, not {sha256}"
                )
            tmp.replace(final)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def publish(self, body: bytes) -> tuple[SignedRelease, Path, bool]:
        """Store a release and its upload; ``(release, folder, replaced_release_only)``."""
        try:
            release = SignedRelease.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BadRequestError(f"invalid release: {where}: {first['msg']}") from None
        manifest = release.manifest
        if release.signed.expires_at <= dt.datetime.now(dt.timezone.utc):
            raise BadRequestError(
                f"the release expired at {release.signed.expires_at.isoformat()}; sign it again"
            )
        for part in (manifest.name, manifest.version, manifest.profile):
            if not MODEL_NAME.match(part):
                raise BadRequestError(f"release names {part!r}, which cannot be a store folder")
        root = self.store.ensure()
        target = root / manifest.name / manifest.version / manifest.profile
        release_bytes = (release.to_json()).encode("utf-8")
        if target.exists():
            stored = _read_manifest(target)
            if stored != manifest.model_dump(mode="json"):
                raise ConflictError(
                    f"{manifest.name} {manifest.version} ({manifest.profile}) is published "
                    "already with another artifact; publish a higher version"
                )
            _write_atomic(target / RELEASE_FILENAME, release_bytes)
            return release, target, True
        upload = self.upload_path(manifest.sha256)
        if not upload.is_file():
            raise BadRequestError(
                f"no upload with sha256 {manifest.sha256}: PUT /v1/uploads/{manifest.sha256} first"
            )
        if upload.stat().st_size != manifest.size_bytes:
            raise BadRequestError(
                f"the upload has {upload.stat().st_size} bytes; the manifest says "
                f"{manifest.size_bytes}"
            )
        staging = self.store.work_dir("staging", uuid.uuid4().hex)
        staging.mkdir(parents=True)
        try:
            shutil.copyfile(upload, staging / manifest.file)
            (staging / MANIFEST_FILENAME).write_text(manifest.to_json(), encoding="utf-8")
            (staging / RELEASE_FILENAME).write_bytes(release_bytes)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if target.exists():
                raise ConflictError(
                    f"{manifest.name} {manifest.version} ({manifest.profile}) was just published"
                ) from exc
            raise
        upload.unlink(missing_ok=True)
        return release, target, False

    def announcements(self) -> dict[str, ModelAnnouncement]:
        """Per device class, the newest signed release of each model built for it."""
        newest: dict[tuple[str, str], tuple[int, list[dict[str, Any]]]] = {}
        root = self.store.root
        if not root.is_dir():
            return {}
        for model in sorted(root.iterdir()):
            if not MODEL_NAME.match(model.name):
                continue
            for version in self.store.versions(model.name):
                for folder in sorted((model / str(version)).iterdir()):
                    release = _read_release(folder)
                    if release is None:
                        continue
                    device_class = str(release["signed"]["manifest"]["device_class"])
                    key = (device_class, model.name)
                    best = newest.get(key)
                    if best is None or version > best[0]:
                        newest[key] = (version, [release])
                    elif version == best[0]:
                        best[1].append(release)
        now = dt.datetime.now(dt.timezone.utc)
        out: dict[str, ModelAnnouncement] = {}
        for (device_class, _), (_, releases) in sorted(newest.items()):
            entry = out.setdefault(
                device_class,
                ModelAnnouncement(device_class=device_class, releases=[], published_at=now),
            )
            entry.releases.extend(releases)
        return out


def _read_manifest(folder: Path) -> Any:
    try:
        return json.loads((folder / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_release(folder: Path) -> dict[str, Any] | None:
    path = folder / RELEASE_FILENAME
    if not MODEL_NAME.match(folder.name) or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        SignedRelease.model_validate(data)
    except (OSError, ValueError, ValidationError) as exc:
        logger.warning("release %s is unreadable, not announced: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def announcement_payload(announcement: ModelAnnouncement) -> bytes:
    return announcement.model_dump_json().encode("utf-8")


def announce_all(releases: ReleaseStore, announcer: Announcer | None) -> dict[str, bool]:
    """Publish every device class's announcement; topic -> whether it went to the broker."""
    sent: dict[str, bool] = {}
    if announcer is None:
        return sent
    for device_class, announcement in releases.announcements().items():
        topic = fleet_models_topic(device_class)
        sent[topic] = announcer.set_retained(topic, announcement_payload(announcement))
    return sent


def router(
    settings: HubSettings, access: Access, announcer: Callable[[], Announcer | None]
) -> APIRouter:
    releases = ReleaseStore(ArtifactStore(store_root(settings)))
    admin_scope = Depends(scope_check(access, "admin"))
    api = APIRouter()

    @api.put("/v1/uploads/{sha256}", dependencies=[admin_scope], status_code=201)
    async def upload(sha256: str, request: Request) -> dict[str, Any]:
        size = await releases.receive(sha256, request, settings.limits.payload_max_bytes)
        return {"sha256": sha256, "size_bytes": size}

    @api.post(
        "/v1/releases",
        dependencies=[admin_scope],
        status_code=201,
        responses={
            200: {"description": "the artifact was published already: its release was replaced"},
            409: {"model": ErrorResponse, "description": "the version holds another artifact"},
        },
    )
    async def publish(request: Request) -> JSONResponse:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > RELEASE_MAX_BYTES:
                raise PayloadTooLargeError(f"a release is at most {RELEASE_MAX_BYTES} bytes")
        release, folder, replaced = await asyncio.to_thread(releases.publish, bytes(body))
        manifest = release.manifest
        topic = fleet_models_topic(manifest.device_class)
        bridge = announcer()
        announced = False
        if bridge is not None:
            announcement = (await asyncio.to_thread(releases.announcements)).get(
                manifest.device_class
            )
            if announcement is not None:
                announced = bridge.set_retained(topic, announcement_payload(announcement))
        logger.info(
            "published %s %s (%s) for %s%s",
            manifest.name,
            manifest.version,
            manifest.profile,
            manifest.device_class,
            ", announced" if announced else "",
        )
        base = f"/v1/artifacts/{manifest.name}/{manifest.version}/{folder.name}"
        return JSONResponse(
            {
                "name": manifest.name,
                "version": manifest.version,
                "profile": manifest.profile,
                "device_class": manifest.device_class,
                "sha256": manifest.sha256,
                "release_replaced": replaced,
                "topic": topic,
                "announced": announced,
                "files": {
                    "model": f"{base}/{manifest.file}",
                    "manifest": f"{base}/{MANIFEST_FILENAME}",
                    "release": f"{base}/{RELEASE_FILENAME}",
                },
            },
            status_code=200 if replaced else 201,
        )

    return api
