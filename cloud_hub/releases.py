"""Signed releases: uploads, publishing into the shared store, and fleet announcements.

    PUT  /v1/uploads/{sha256}   admin; the model file as the raw body, kept only if its sha256
                                is the one named (content-addressed: a repeat is harmless)
    POST /v1/releases           admin; a signed release (protocols.SignedRelease) naming an
                                upload by sha256: stored as <name>/<version>/<profile>/ with
                                the model, manifest.json and release.json, then announced

Uploads (``.uploads/<sha256>``) and releases live in the shared store, so the upload and the
release may reach different replicas. The hub does not trust or check signatures: devices do
(docs/updates.md). It checks what it can see: the release parses and has not expired, the
upload matches the manifest's sha256 and size, and a version already stored is never replaced
by other bytes (409). Publishing the same artifact again with a new release (a new expiry, more
signatures) replaces only ``release.json``.

Two replicas publishing one folder at once: the manifest is written first with
``put_if_absent``, and the replica whose manifest landed writes the model; the other compares
manifests (409 when they differ). ``release.json`` is written last, and only a folder with one
is announced, so a device never hears of a model that is not whole in the store.

Each device class's announcement (:class:`protocols.ModelAnnouncement`) holds the newest
release of every model built for it, read from the store, so every replica computes the same
bytes (``published_at`` is the newest release's ``signed_at``). It is published retained on
``hybrid/v1/fleet/{device_class}/models`` after each publish, on every connect of the MQTT
bridge (read from the store again then), and by a periodic check (``announce_interval_s``) when
the store's newest differs from what the broker holds (the bridge watches the fleet topics),
which repairs an older view that another replica published last.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Request
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
from .artifacts import ArtifactStore, scope_check
from .errors import (
    BadRequestError,
    ConflictError,
    HubError,
    PayloadTooLargeError,
    StoreObjectMissingError,
)
from .settings import HubSettings

__all__ = ["Announcements", "Announcer", "ReleaseStore", "router"]

logger = logging.getLogger(__name__)

UPLOADS = ".uploads"
RELEASE_MAX_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 1 << 20


class Announcer(Protocol):
    """What publishes retained announcements: the MQTT bridge."""

    def set_retained(self, topic: str, payload: bytes) -> bool: ...

    def retained(self, topic: str) -> bytes | None:
        """What the broker was last seen holding on ``topic``; ``None`` when unknown."""
        ...


class ReleaseStore:
    def __init__(self, store: ArtifactStore, *, work_dir: Path | None = None) -> None:
        self.store = store
        self.objects = store.objects
        self.work_dir = work_dir

    @staticmethod
    def upload_key(sha256: str) -> str:
        return f"{UPLOADS}/{sha256}"

    async def receive(self, sha256: str, request: Request, limit_bytes: int) -> int:
        """Stream the body to a local file, then into the store as ``.uploads/<sha256>`` when
        its digest matches."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BadRequestError("the upload path must name the file's sha256 (64 hex digits)")
        digest = hashlib.sha256()
        size = 0
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", dir=self.work_dir)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
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
            await asyncio.to_thread(self.objects.put_file, self.upload_key(sha256), tmp)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def publish(self, body: bytes) -> tuple[SignedRelease, str, bool]:
        """Store a release and its upload; ``(release, folder key, replaced_release_only)``."""
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
        for part in (manifest.name, manifest.version, manifest.profile, manifest.file):
            if not MODEL_NAME.match(part):
                raise BadRequestError(f"release names {part!r}, which cannot be a store folder")
        folder = f"{manifest.name}/{manifest.version}/{manifest.profile}"
        model_key = f"{folder}/{manifest.file}"
        manifest_json = manifest.to_json()
        upload = self.upload_key(manifest.sha256)
        claimed = False
        if not self.objects.exists(f"{folder}/{MANIFEST_FILENAME}"):
            info = self.objects.stat(upload)
            if info is None:
                raise BadRequestError(
                    f"no upload with sha256 {manifest.sha256}: "
                    f"PUT /v1/uploads/{manifest.sha256} first"
                )
            if info.size_bytes != manifest.size_bytes:
                raise BadRequestError(
                    f"the upload has {info.size_bytes} bytes; the manifest says "
                    f"{manifest.size_bytes}"
                )
            claimed = self.objects.put_if_absent(
                f"{folder}/{MANIFEST_FILENAME}", manifest_json.encode("utf-8")
            )
        if not claimed:
            stored = _read_json(self.objects, f"{folder}/{MANIFEST_FILENAME}")
            if stored != manifest.model_dump(mode="json"):
                raise ConflictError(
                    f"{manifest.name} {manifest.version} ({manifest.profile}) is published "
                    "already with another artifact; publish a higher version"
                )
        model = self.objects.stat(model_key)
        if model is None or model.size_bytes != manifest.size_bytes:
            # the first publish, or one whose replica died before the model was copied
            try:
                self.objects.copy(upload, model_key)
            except StoreObjectMissingError:
                model = self.objects.stat(model_key)  # another replica publishing it just now
                if model is not None and model.size_bytes == manifest.size_bytes:
                    pass
                else:
                    raise BadRequestError(
                        f"no upload with sha256 {manifest.sha256}: "
                        f"PUT /v1/uploads/{manifest.sha256} first"
                    ) from None
        replaced = self.objects.exists(f"{folder}/{RELEASE_FILENAME}")
        self.objects.put(f"{folder}/{RELEASE_FILENAME}", release.to_json().encode("utf-8"))
        if claimed:
            self.objects.delete(upload)
        return release, folder, replaced and not claimed

    def announcements(self) -> dict[str, ModelAnnouncement]:
        """Per device class, the newest signed release of each model built for it."""
        newest: dict[tuple[str, str], tuple[int, list[dict[str, Any]]]] = {}
        for model in self.objects.children(""):
            if not MODEL_NAME.match(model):
                continue
            keys = sorted(
                info.key
                for info in self.objects.list_objects(f"{model}/")
                if info.key.endswith(f"/{RELEASE_FILENAME}")
            )
            for key in keys:
                parts = key.split("/")
                if len(parts) != 4 or not parts[1].isdigit() or not MODEL_NAME.match(parts[2]):
                    continue
                version = int(parts[1])
                release = _read_release(self.objects, key)
                if release is None:
                    continue
                device_class = str(release["signed"]["manifest"]["device_class"])
                entry = newest.get((device_class, model))
                if entry is None or version > entry[0]:
                    newest[(device_class, model)] = (version, [release])
                elif version == entry[0]:
                    entry[1].append(release)
        out: dict[str, ModelAnnouncement] = {}
        for (device_class, _), (_, releases) in sorted(newest.items()):
            entry_ = out.setdefault(
                device_class, ModelAnnouncement(device_class=device_class, releases=[])
            )
            entry_.releases.extend(releases)
        for announcement in out.values():
            announcement.published_at = max(
                dt.datetime.fromisoformat(str(r["signed"]["signed_at"]).replace("Z", "+00:00"))
                for r in announcement.releases
            )
        return out


def _read_json(objects: Any, key: str) -> Any:
    try:
        return json.loads(objects.get(key))
    except (StoreObjectMissingError, ValueError):
        return None


def _read_release(objects: Any, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads(objects.get(key))
        SignedRelease.model_validate(data)
    except (StoreObjectMissingError, ValueError, ValidationError) as exc:
        logger.warning("release %s is unreadable, not announced: %s", key, exc)
        return None
    return data if isinstance(data, dict) else None


def announcement_payload(announcement: ModelAnnouncement) -> bytes:
    return announcement.model_dump_json().encode("utf-8")


def retained_payloads(releases: ReleaseStore) -> dict[str, bytes]:
    """Topic -> the retained announcement the store calls for now."""
    return {
        fleet_models_topic(device_class): announcement_payload(announcement)
        for device_class, announcement in releases.announcements().items()
    }


class Announcements:
    """Keeps the retained announcements equal to the store's newest releases: on demand
    (after a publish, on connect) and every ``interval_s``."""

    def __init__(
        self,
        releases: ReleaseStore,
        announcer: Callable[[], Announcer | None],
        interval_s: float,
    ) -> None:
        self._releases = releases
        self._announcer = announcer
        self._interval_s = interval_s
        self._sent: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    async def sync(
        self, *, force: bool = False, topics: frozenset[str] = frozenset()
    ) -> dict[str, bool]:
        """Publish each topic whose payload differs from what the broker was last seen holding
        (and ``topics``, or all with ``force``, anyway); topic -> whether it went out."""
        bridge = self._announcer()
        if bridge is None:
            return {}
        async with self._lock:
            payloads = await asyncio.to_thread(retained_payloads, self._releases)
            sent: dict[str, bool] = {}
            for topic, payload in payloads.items():
                seen = bridge.retained(topic)
                held = seen if seen is not None else self._sent.get(topic)
                if force or topic in topics or held != payload:
                    sent[topic] = bridge.set_retained(topic, payload)
                    if sent[topic]:
                        self._sent[topic] = payload
            return sent

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._loop(), name="announcements")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sync()
            except HubError as exc:
                logger.warning("announcements not checked: %s", exc.message)
            except Exception:
                logger.exception("announcements not checked")


def router(
    settings: HubSettings, access: Access, releases: ReleaseStore, announcements: Announcements
) -> APIRouter:
    admin_scope = Depends(scope_check(access, "admin"))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with announcements.running():
            yield

    api = APIRouter(lifespan=lifespan)

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
        sent = await announcements.sync(topics=frozenset({topic}))
        announced = sent.get(topic, False)
        logger.info(
            "published %s %s (%s) for %s%s",
            manifest.name,
            manifest.version,
            manifest.profile,
            manifest.device_class,
            ", announced" if announced else "",
        )
        base = f"/v1/artifacts/{folder}"
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
