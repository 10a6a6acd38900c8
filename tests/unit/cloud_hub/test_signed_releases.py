"""The hub's side of signed releases, through the real app: uploads checked by sha256,
releases stored beside their artifact (never over another one), announcements per device
class, admin scope, and resumable downloads (HTTP Range)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.app import create_app
from cloud_hub.artifacts import ArtifactStore
from cloud_hub.releases import ReleaseStore
from cloud_hub.settings import load_settings
from cloud_hub.store.filesystem import FilesystemStore
from protocols import ModelAnnouncement
from tests.support import models
from tests.support.updates import Keys, make_artifact, make_keys, read_manifest, sign

ADMIN = {"Authorization": "Bearer admin-key-0123456789"}
INFER = {"Authorization": "Bearer infer-key-0123456789"}


@pytest.fixture(scope="module")
def model_file() -> Path:
    return models.require(models.ensure_digits_models).model("fp16")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    settings = load_settings(
        None,
        model_repository=repo,
        auth={
            "api_keys": [
                {"name": "ops", "key": ADMIN["Authorization"][7:], "scopes": ["admin", "infer"]},
                {"name": "device", "key": INFER["Authorization"][7:], "scopes": ["infer"]},
            ]
        },
    )
    with TestClient(create_app(settings)) as client:
        yield client, repo / ".artifacts"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path)


def _publish(client: TestClient, folder: Path, headers: dict[str, str] = ADMIN) -> Any:
    data = (folder / "model.tflite").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    put = client.put(f"/v1/uploads/{sha}", content=data, headers=headers)
    if put.status_code != 201:
        return put
    return client.post(
        "/v1/releases", content=(folder / "release.json").read_bytes(), headers=headers
    )


def test_publish_stores_the_release_and_downloads_resume(
    hub: tuple[TestClient, Path], tmp_path: Path, model_file: Path, keys: Keys
) -> None:
    client, store = hub
    folder = make_artifact(tmp_path / "a", model_file, version="2")
    sign(folder, [keys])
    reply = _publish(client, folder)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["announced"] is False  # no MQTT broker configured
    assert body["topic"] == "hybrid/v1/fleet/test-class/models"
    listed = client.get("/v1/artifacts", headers=INFER).json()["artifacts"]
    assert [(a["name"], a["version"], a["signed"]) for a in listed] == [("digits", "2", True)]
    data = (folder / "model.tflite").read_bytes()
    whole = client.get(body["files"]["model"], headers=INFER)
    assert whole.content == data
    tail = client.get(body["files"]["model"], headers={**INFER, "Range": "bytes=1000-"})
    assert tail.status_code == 206
    assert tail.content == data[1000:]
    release = client.get(body["files"]["release"], headers=INFER).json()
    assert release == json.loads((folder / "release.json").read_text())
    assert not (store / ".uploads").exists()  # the upload moved into place


def test_uploads_must_match_their_sha256(hub: tuple[TestClient, Path]) -> None:
    client, store = hub
    reply = client.put(f"/v1/uploads/{'0' * 64}", content=b"not that", headers=ADMIN)
    assert reply.status_code == 400
    assert "sha256" in reply.json()["error"]
    assert client.put("/v1/uploads/..%2F..%2Fetc", content=b"x", headers=ADMIN).status_code in (
        400,
        404,
    )
    assert not (store / ".uploads").exists() or not list((store / ".uploads").iterdir())


def test_publishing_needs_the_admin_scope(
    hub: tuple[TestClient, Path], tmp_path: Path, model_file: Path, keys: Keys
) -> None:
    client, _ = hub
    folder = make_artifact(tmp_path / "a", model_file, version="2")
    sign(folder, [keys])
    assert _publish(client, folder, headers=INFER).status_code == 403


def test_a_release_needs_its_upload_and_a_version_is_never_replaced(
    hub: tuple[TestClient, Path], tmp_path: Path, model_file: Path, keys: Keys, digits_int8: Path
) -> None:
    client, _ = hub
    folder = make_artifact(tmp_path / "a", model_file, version="2")
    sign(folder, [keys])
    missing = client.post(
        "/v1/releases", content=(folder / "release.json").read_bytes(), headers=ADMIN
    )
    assert missing.status_code == 400
    assert "PUT /v1/uploads" in missing.json()["error"]
    assert _publish(client, folder).status_code == 201
    # The same artifact with a fresh release (new expiry): only release.json changes.
    sign(folder, [keys], expires_in_s=7200)
    again = _publish(client, folder)
    assert again.status_code == 200
    assert again.json()["release_replaced"] is True
    # Other bytes under the same version: refused.
    other = make_artifact(tmp_path / "b", digits_int8, version="2")
    sign(other, [keys])
    conflict = _publish(client, other)
    assert conflict.status_code == 409
    bad = client.post("/v1/releases", content=b'{"signed": {}}', headers=ADMIN)
    assert bad.status_code == 400
    expired = make_artifact(tmp_path / "c", model_file, version="3")
    sign(expired, [keys], expires_in_s=-1)
    reply = _publish(client, expired)
    assert reply.status_code == 400
    assert "expired" in reply.json()["error"]


def test_announcements_hold_the_newest_release_per_model_and_class(
    tmp_path: Path, model_file: Path, keys: Keys, digits_int8: Path
) -> None:
    releases = ReleaseStore(ArtifactStore(FilesystemStore(tmp_path / "store")))
    for version, cls, source in (
        ("2", "a", model_file),
        ("3", "a", digits_int8),
        ("4", "b", model_file),
    ):
        folder = make_artifact(
            tmp_path / f"{cls}{version}",
            source,
            version=version,
            device_class=cls,
            profile=f"p-{cls}",
        )
        sign(folder, [keys])
        releases.objects.put(
            releases.upload_key(read_manifest(folder).sha256),
            (folder / "model.tflite").read_bytes(),
        )
        releases.publish((folder / "release.json").read_bytes())
    found = releases.announcements()
    assert sorted(found) == ["a", "b"]
    a = ModelAnnouncement.model_validate_json(found["a"].model_dump_json())
    assert [r["signed"]["manifest"]["version"] for r in a.releases] == ["3"]
    assert [r["signed"]["manifest"]["version"] for r in found["b"].releases] == ["4"]


@pytest.fixture(scope="module")
def digits_int8() -> Path:
    return models.require(models.ensure_digits_models).model("int8")
