"""``model-convert publish``: send a signed artifact to a hub, which stores and announces it.

Two requests, both in the ``admin`` scope: ``PUT /v1/uploads/{sha256}`` streams the model file
(content-addressed, so a repeat after a lost answer is harmless), then ``POST /v1/releases``
hands over the signed release naming that sha256. The hub checks the upload against the
release, stores both in its artifact store and announces the release, retained, on the device
class's fleet topic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from protocols import RELEASE_FILENAME, SignedRelease

from .errors import ArtifactError, ConversionError

__all__ = ["PublishError", "publish_artifact"]

logger = logging.getLogger(__name__)

TIMEOUT_S = 60.0


class PublishError(ConversionError):
    """The hub refused the release or could not be reached."""

    exit_code = 7


def _base(hub: str) -> str:
    hub = hub.rstrip("/")
    return hub if "://" in hub else f"http://{hub}"


def _call(request: urllib.request.Request) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        raise PublishError(f"the hub answered {exc.code} to {request.full_url}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise PublishError(f"cannot reach the hub at {request.full_url}: {exc}") from exc
    try:
        data = json.loads(body) if body else {}
    except ValueError as exc:
        raise PublishError(f"the hub's answer to {request.full_url} is not JSON") from exc
    return data if isinstance(data, dict) else {"result": data}


def publish_artifact(folder: Path, hub: str, *, api_key: str | None = None) -> dict[str, Any]:
    """Upload the model and publish the signed ``release.json`` of ``folder``; the hub's answer."""
    release_path = folder / RELEASE_FILENAME
    try:
        release = SignedRelease.model_validate_json(release_path.read_bytes())
    except OSError as exc:
        raise ArtifactError(
            f"{release_path} cannot be read ({exc.strerror or exc}); sign the artifact first "
            "(model-convert sign)"
        ) from exc
    except ValueError as exc:
        raise ArtifactError(f"{release_path} is not a valid signed release: {exc}") from exc
    manifest = release.manifest
    model_path = folder / manifest.file
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = _base(hub)
    try:
        data = model_path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {model_path}: {exc.strerror or exc}") from exc
    upload = urllib.request.Request(
        f"{base}/v1/uploads/{manifest.sha256}",
        data=data,
        method="PUT",
        headers={**headers, "Content-Type": "application/octet-stream"},
    )
    _call(upload)
    publish = urllib.request.Request(
        f"{base}/v1/releases",
        data=release_path.read_bytes(),
        method="POST",
        headers={**headers, "Content-Type": "application/json"},
    )
    result = _call(publish)
    logger.info("published %s %s to %s", manifest.name, manifest.version, base)
    return result
