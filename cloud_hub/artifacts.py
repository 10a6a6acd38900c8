"""The artifact store: converted models in the shared store, listed and downloaded over HTTP.

Layout, one folder per build of a model, one sub-folder per device profile, as
``model-convert build --out`` writes them (keys in the store, :mod:`cloud_hub.store`)::

    <name>/<version>/<profile>/model.tflite | model.onnx | model.plan
    <name>/<version>/<profile>/manifest.json
    <name>/<version>/<profile>/release.json     (signed releases, :mod:`cloud_hub.releases`)
    <name>/<version>/.reserved                  (the conversion job that took the version)

With the filesystem store the folder is ``store.path``, else ``artifact_store``, else
``<model_repository>/.artifacts`` (the repository ignores dot-folders). Keys starting with a dot
(``.uploads/``, ``.jobs/``) hold uploads and conversion jobs and are never listed or served. An
artifact is listed once its manifest is stored, and its manifest is stored after its model file.

``GET /v1/artifacts`` lists the artifacts (filters: ``name``, ``device_class``, ``profile``);
``GET /v1/artifacts/{name}/{version}/{file}`` downloads one file, where ``file`` is a path inside
the version folder (``rpi4-litert-fp16/model.tflite``), with HTTP Range support, from whichever
replica answers. Both need the ``infer`` scope. Names are checked part by part, so no key
leads out of the artifacts.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from protocols import MANIFEST_FILENAME, MODEL_NAME, RELEASE_FILENAME

from .access import Access
from .auth import Principal
from .errors import ArtifactNotFoundError, StoreObjectMissingError
from .settings import HubSettings
from .store import ObjectInfo, ObjectStore, open_store

__all__ = [
    "ArtifactStore",
    "ranged_response",
    "router",
    "scope_check",
]

logger = logging.getLogger(__name__)

RESERVED = ".reserved"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def scope_check(access: Access, scope: str) -> Callable[[Request], Awaitable[Principal | None]]:
    """A FastAPI dependency that lets the caller through only with ``scope``."""

    async def check(request: Request) -> Principal | None:
        return access.check(request.headers, request.client.host if request.client else None, scope)

    return check


class ArtifactStore:
    """The artifacts in a shared :class:`ObjectStore` (blocking calls; run them in threads)."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    @classmethod
    def from_settings(cls, settings: HubSettings) -> ArtifactStore:
        return cls(open_store(settings))

    def versions(self, name: str) -> list[int]:
        if not MODEL_NAME.match(name):
            return []
        return sorted(int(v) for v in self.objects.children(f"{name}/") if v.isdigit())

    def reserve_version(self, name: str, owner: str) -> int:
        """The next free version of ``name``, claimed for ``owner`` in the store, so replicas
        taking versions at once never take the same one."""
        version = max(self.versions(name), default=0) + 1
        while not self.objects.put_if_absent(f"{name}/{version}/{RESERVED}", owner.encode()):
            version += 1
        return version

    def entries(
        self,
        *,
        name: str | None = None,
        device_class: str | None = None,
        profile: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every artifact with a readable manifest, newest version first within a name."""
        found: list[dict[str, Any]] = []
        models = [name] if name is not None else self.objects.children("")
        for model in models:
            if not MODEL_NAME.match(model):
                continue
            folders: dict[tuple[int, str], set[str]] = {}
            for info in self.objects.list_objects(f"{model}/"):
                parts = info.key.split("/")
                if len(parts) == 4 and parts[1].isdigit() and MODEL_NAME.match(parts[2]):
                    folders.setdefault((int(parts[1]), parts[2]), set()).add(parts[3])
            for (version, folder), files in sorted(
                folders.items(), key=lambda i: (-i[0][0], i[0][1])
            ):
                if MANIFEST_FILENAME not in files:
                    continue
                entry = self._entry(model, version, folder, RELEASE_FILENAME in files)
                if entry is None:
                    continue
                if device_class is not None and entry["device_class"] != device_class:
                    continue
                if profile is not None and entry["profile"] != profile:
                    continue
                found.append(entry)
        return found

    def _entry(self, name: str, version: int, folder: str, signed: bool) -> dict[str, Any] | None:
        key = f"{name}/{version}/{folder}/{MANIFEST_FILENAME}"
        try:
            manifest = json.loads(self.objects.get(key))
            file_name = str(manifest["file"])
        except (StoreObjectMissingError, ValueError, KeyError, TypeError) as exc:
            logger.warning("artifact %s: unreadable manifest: %s", key, exc)
            return None
        base = f"/v1/artifacts/{name}/{version}/{folder}"
        validation = manifest.get("validation") or {}
        entry: dict[str, Any] = {
            "name": name,
            "version": str(version),
            "profile": manifest.get("profile", folder),
            "device_class": manifest.get("device_class"),
            "format": manifest.get("format"),
            "precision": manifest.get("precision"),
            "sha256": manifest.get("sha256"),
            "size_bytes": manifest.get("size_bytes"),
            "created_at": manifest.get("created_at"),
            "validation_passed": validation.get("passed"),
            "files": {"model": f"{base}/{file_name}", "manifest": f"{base}/{MANIFEST_FILENAME}"},
            "signed": signed,
        }
        if signed:
            entry["files"]["release"] = f"{base}/{RELEASE_FILENAME}"
        return entry

    def resolve(self, name: str, version: str, file: str) -> tuple[str, ObjectInfo]:
        """The key and size of ``<name>/<version>/<file>``, or 404; never a key outside the
        artifacts (no dot-folders, no ``..``)."""
        parts = [name, version, *file.split("/")]
        missing = ArtifactNotFoundError(f"no artifact file {name}/{version}/{file}")
        if not version.isdigit() or len(parts) > 8 or not all(MODEL_NAME.match(p) for p in parts):
            raise missing
        key = "/".join(parts)
        info = self.objects.stat(key)
        if info is None:
            raise missing
        return key, info


def ranged_response(
    objects: ObjectStore,
    key: str,
    info: ObjectInfo,
    range_header: str | None,
    *,
    media_type: str,
    filename: str,
) -> Response:
    """The object, whole (200) or one byte range of it (206, ``Range: bytes=a-b``, ``a-`` or
    ``-n``); 416 for a range past its end. Several ranges get the whole object."""
    size = info.size_bytes
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Last-Modified": _http_date(info.modified_s),
    }
    start, end, status = 0, size, 200
    match = _RANGE.match((range_header or "").replace(" ", ""))
    if match and (match.group(1) or match.group(2)):
        first, last = match.group(1), match.group(2)
        if first:
            start = int(first)
            end = min(size, int(last) + 1) if last else size
        else:
            start, end = max(0, size - int(last)), size
        if start >= size or end <= start:
            return Response(
                status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"}
            )
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    body: Iterator[bytes] = objects.read(key, start, end)
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=headers)


def _http_date(epoch_s: float) -> str:
    from email.utils import formatdate

    return formatdate(epoch_s, usegmt=True)


def router(settings: HubSettings, access: Access, store: ArtifactStore | None = None) -> APIRouter:
    store = store or ArtifactStore.from_settings(settings)
    infer_scope = Depends(scope_check(access, "infer"))
    api = APIRouter()

    @api.get("/v1/artifacts", dependencies=[infer_scope])
    def list_artifacts(
        name: str | None = None, device_class: str | None = None, profile: str | None = None
    ) -> dict[str, Any]:
        return {"artifacts": store.entries(name=name, device_class=device_class, profile=profile)}

    @api.get("/v1/artifacts/{name}/{version}/{file:path}", dependencies=[infer_scope])
    def download(name: str, version: str, file: str, request: Request) -> Response:
        key, info = store.resolve(name, version, file)
        filename = key.rsplit("/", 1)[-1]
        return ranged_response(
            store.objects,
            key,
            info,
            request.headers.get("range"),
            media_type="application/json"
            if filename.endswith(".json")
            else "application/octet-stream",
            filename=filename,
        )

    return api
