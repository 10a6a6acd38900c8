"""The artifact store: converted models on the filesystem, listed and downloaded over HTTP.

Layout, one folder per build of a model, one sub-folder per device profile, as
``model-convert build --out`` writes them::

    <store>/<name>/<version>/<profile>/model.tflite | model.onnx | model.plan
    <store>/<name>/<version>/<profile>/manifest.json

The store is ``settings.artifact_store``, by default ``<model_repository>/.artifacts`` (the
repository ignores dot-folders, and one volume then holds both, so publishing a version is a
copy on one filesystem). Dot-folders inside the store (``.staging``, ``.uploads``) hold work in
progress and are never listed or served.

``GET /v1/artifacts`` lists the artifacts (filters: ``name``, ``device_class``, ``profile``);
``GET /v1/artifacts/{name}/{version}/{file}`` downloads one file, where ``file`` is a path inside
the version folder (``rpi4-litert-fp16/model.tflite``), with HTTP Range support. Both need the
``infer`` scope. Names are checked part by part and the resolved path must stay inside the store,
so neither ``..`` nor a link leads out of it.

Signed releases (``release.json`` beside the manifest) are published and announced by
:mod:`cloud_hub.releases`; see docs/updates.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from protocols import MANIFEST_FILENAME, MODEL_NAME, RELEASE_FILENAME

from .access import Access
from .auth import Principal
from .errors import ArtifactNotFoundError, HubError, UnavailableError
from .settings import HubSettings

__all__ = ["ArtifactStore", "router", "scope_check", "store_root"]

logger = logging.getLogger(__name__)


def store_root(settings: HubSettings) -> Path:
    return settings.artifact_store or settings.model_repository / ".artifacts"


def scope_check(access: Access, scope: str) -> Callable[[Request], Awaitable[Principal | None]]:
    """A FastAPI dependency that lets the caller through only with ``scope``."""

    async def check(request: Request) -> Principal | None:
        return access.check(request.headers, request.client.host if request.client else None, scope)

    return check


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> Path:
        """The store's folder, made when missing; 503 when it cannot be."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnavailableError(
                f"the artifact store {self.root} is not writable: {exc}"
            ) from exc
        return self.root.resolve()

    def work_dir(self, kind: str, job_id: str) -> Path:
        """``<store>/.<kind>/<job_id>``, for uploads and builds in progress."""
        return self.ensure() / f".{kind}" / job_id

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not MODEL_NAME.match(name) or not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())

    def next_version(self, name: str, reserved: set[int]) -> int:
        return max([*self.versions(name), *reserved], default=0) + 1

    def commit(self, built: Path, name: str, version: int) -> Path:
        """Move a finished build folder into place as ``<name>/<version>`` (one rename)."""
        target = self.ensure() / name / str(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise HubError(f"artifact {name}/{version} exists already")
        built.rename(target)
        return target

    def entries(
        self,
        *,
        name: str | None = None,
        device_class: str | None = None,
        profile: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every artifact with a readable manifest, newest version first within a name."""
        if not self.root.is_dir():
            return []
        found: list[dict[str, Any]] = []
        for model in sorted(self.root.iterdir()):
            if not MODEL_NAME.match(model.name) or (name is not None and model.name != name):
                continue
            for version in sorted(self.versions(model.name), reverse=True):
                folder = model / str(version)
                for artifact in sorted(folder.iterdir()):
                    entry = self._entry(model.name, version, artifact)
                    if entry is None:
                        continue
                    if device_class is not None and entry["device_class"] != device_class:
                        continue
                    if profile is not None and entry["profile"] != profile:
                        continue
                    found.append(entry)
        return found

    @staticmethod
    def _entry(name: str, version: int, folder: Path) -> dict[str, Any] | None:
        manifest_path = folder / MANIFEST_FILENAME
        if not MODEL_NAME.match(folder.name) or not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            file_name = str(manifest["file"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("artifact %s: unreadable manifest: %s", folder, exc)
            return None
        base = f"/v1/artifacts/{name}/{version}/{folder.name}"
        validation = manifest.get("validation") or {}
        entry: dict[str, Any] = {
            "name": name,
            "version": str(version),
            "profile": manifest.get("profile", folder.name),
            "device_class": manifest.get("device_class"),
            "format": manifest.get("format"),
            "precision": manifest.get("precision"),
            "sha256": manifest.get("sha256"),
            "size_bytes": manifest.get("size_bytes"),
            "created_at": manifest.get("created_at"),
            "validation_passed": validation.get("passed"),
            "files": {"model": f"{base}/{file_name}", "manifest": f"{base}/{MANIFEST_FILENAME}"},
            "signed": (folder / RELEASE_FILENAME).is_file(),
        }
        if entry["signed"]:
            entry["files"]["release"] = f"{base}/{RELEASE_FILENAME}"
        return entry

    def resolve(self, name: str, version: str, file: str) -> Path:
        """The file at ``<name>/<version>/<file>``, or 404; never a path outside the store."""
        parts = [name, version, *file.split("/")]
        missing = ArtifactNotFoundError(f"no artifact file {name}/{version}/{file}")
        if not version.isdigit() or len(parts) > 8 or not all(MODEL_NAME.match(p) for p in parts):
            raise missing
        root = self.root.resolve()
        path = root.joinpath(*parts).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise missing
        return path


def router(settings: HubSettings, access: Access) -> APIRouter:
    store = ArtifactStore(store_root(settings))
    infer_scope = Depends(scope_check(access, "infer"))
    api = APIRouter()

    @api.get("/v1/artifacts", dependencies=[infer_scope])
    def list_artifacts(
        name: str | None = None, device_class: str | None = None, profile: str | None = None
    ) -> dict[str, Any]:
        return {"artifacts": store.entries(name=name, device_class=device_class, profile=profile)}

    @api.get("/v1/artifacts/{name}/{version}/{file:path}", dependencies=[infer_scope])
    async def download(name: str, version: str, file: str) -> FileResponse:
        path = store.resolve(name, version, file)
        media_type = "application/json" if path.suffix == ".json" else "application/octet-stream"
        return FileResponse(path, media_type=media_type, filename=path.name)

    return api
