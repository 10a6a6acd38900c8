"""Conversion jobs through a real ``cloud-hub serve``: upload, job, artifact store, repository."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import models
from tests.support.hub import HubProcess
from tests.unit.converters.sources import DigitsSource, ensure_digits_source

pytestmark = pytest.mark.integration

OPS_KEY = "ops-key-0123456789abcdef"
APPS_KEY = "apps-key-0123456789abcdef"
JOB_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def digits() -> DigitsSource:
    return models.require(ensure_digits_source)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = HubProcess(
        repository=tmp_path_factory.mktemp("repo"),
        workdir=tmp_path_factory.mktemp("hub"),
        config={
            "auth": {
                "api_keys": [
                    {"name": "ops", "key": OPS_KEY, "scopes": ["infer", "admin"]},
                    {"name": "apps", "key": APPS_KEY, "scopes": ["infer"]},
                ]
            }
        },
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def ops(hub: HubProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"http://{hub.url}", headers={"Authorization": f"Bearer {OPS_KEY}"}, timeout=30
    ) as client:
        yield client


def wait_for(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    seen = {job["state"]}
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job still {job['state']} after {JOB_TIMEOUT_S} s"
        time.sleep(0.5)
        reply = client.get(f"/v1/conversions/{job['id']}")
        assert reply.status_code == 200
        job = reply.json()
        seen.add(job["state"])
    return job | {"seen_states": seen}


def upload(client: httpx.Client, body: bytes, **params: Any) -> httpx.Response:
    return client.post(
        "/v1/conversions",
        params=params,
        content=body,
        headers={"Content-Type": "application/octet-stream"},
    )


def test_a_job_builds_publishes_and_serves_its_artifacts(
    hub: HubProcess, ops: httpx.Client, digits: DigitsSource
) -> None:
    x_train, x_test, _ = digits.arrays()
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.write(digits.keras, "model/digits.keras")
        for member, array in (("calibration.npz", x_train[:200]), ("samples.npz", x_test)):
            data = io.BytesIO()
            np.savez(data, pixels=array)
            archive.writestr(member, data.getvalue())
    reply = upload(
        ops,
        bundle.getvalue(),
        filename="digits.zip",
        profile=["cloud-cpu-onnx", "rpi4-litert-int8"],
        publish_to_repository="true",
        model_name="digits-served",
        publish_profile="cloud-cpu-onnx",
    )
    assert reply.status_code == 202, reply.text
    job = reply.json()
    assert reply.headers["location"] == f"/v1/conversions/{job['id']}"
    assert (job["name"], job["version"]) == ("digits", "1")

    job = wait_for(ops, job)
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"] == {"fraction": 1.0, "step": "done"}
    assert job["warnings"] == []  # calibration and samples came in the archive
    by_profile = {a["profile"]: a for a in job["artifacts"]}
    assert set(by_profile) == {"cloud-cpu-onnx", "rpi4-litert-int8"}
    int8 = by_profile["rpi4-litert-int8"]
    assert int8["validation"]["passed"] is True
    assert int8["validation"]["samples_origin"] == "file"
    assert int8["validation"]["outputs"][0]["top1_agreement"] >= 0.98

    # the download matches the manifest, whole and by range
    model = ops.get(int8["files"]["model"])
    assert model.status_code == 200
    manifest = ops.get(int8["files"]["manifest"]).json()
    digest = hashlib.sha256(model.content).hexdigest()
    assert digest == manifest["sha256"] == int8["sha256"]
    assert len(model.content) == manifest["size_bytes"]
    assert manifest["name"] == "digits"
    assert manifest["version"] == "1"
    assert manifest["calibration"]["origin"] == "file"
    part = ops.get(int8["files"]["model"], headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206
    assert part.content == model.content[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{len(model.content)}"

    # devices and apps list and fetch with the infer scope
    with httpx.Client(
        base_url=f"http://{hub.url}", headers={"Authorization": f"Bearer {APPS_KEY}"}
    ) as apps:
        listed = apps.get("/v1/artifacts", params={"device_class": "rpi4"})
        assert listed.status_code == 200
        (entry,) = listed.json()["artifacts"]
        assert (entry["name"], entry["version"], entry["profile"]) == (
            "digits",
            "1",
            "rpi4-litert-int8",
        )
        assert entry["files"] == int8["files"]
        assert apps.get(int8["files"]["model"]).content == model.content

    # the ONNX artifact became version 1 of a served model
    assert job["publish"]["repository_version"] == "1"
    assert job["publish"]["loaded"] is True
    published = hub.repository / "digits-served" / "1" / "model.onnx"
    assert (
        hashlib.sha256(published.read_bytes()).hexdigest() == by_profile["cloud-cpu-onnx"]["sha256"]
    )
    answer = ops.post(
        "/v2/models/digits-served/infer",
        json={
            "inputs": [
                {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": x_test[0].tolist()}
            ]
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [1, 10]

    # nothing left behind in the work folders
    store = hub.repository / ".artifacts"
    for work in (".uploads", ".staging"):
        assert not (store / work).exists() or list((store / work).iterdir()) == []


def test_a_failed_job_reports_why_and_stores_nothing(
    hub: HubProcess, ops: httpx.Client, digits: DigitsSource
) -> None:
    before = ops.get("/v1/artifacts").json()["artifacts"]
    reply = upload(
        ops, digits.keras.read_bytes()[:5000], filename="broken.keras", profile="rpi4-litert-fp16"
    )
    assert reply.status_code == 202
    job = wait_for(ops, reply.json())
    assert job["state"] == "failed"
    assert job["error"]["kind"] == "SourceError"
    assert "broken.keras is not a Keras archive" in job["error"]["message"]
    assert job["artifacts"] == []
    assert ops.get("/v1/artifacts").json()["artifacts"] == before
    assert not (hub.repository / ".artifacts" / "broken").exists()


def test_access_control(hub: HubProcess, digits: DigitsSource) -> None:
    base = f"http://{hub.url}"
    body = digits.keras.read_bytes()
    params = {"filename": "digits.keras", "profile": "rpi4-litert-fp16"}
    assert httpx.post(f"{base}/v1/conversions", params=params, content=body).status_code == 401
    apps = {"Authorization": f"Bearer {APPS_KEY}"}
    denied = httpx.post(f"{base}/v1/conversions", params=params, content=body, headers=apps)
    assert denied.status_code == 403
    assert httpx.get(f"{base}/v1/conversions", headers=apps).status_code == 403
    assert httpx.get(f"{base}/v1/artifacts").status_code == 401
    assert httpx.get(f"{base}/v1/artifacts", headers=apps).status_code == 200


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"filename": "digits.keras", "profile": "rpi9"}, 400, "unknown profile 'rpi9'"),
        ({"filename": "../digits.keras", "profile": "cloud-cpu-onnx"}, 400, "filename"),
        ({"filename": "digits.pt", "profile": "cloud-cpu-onnx"}, 400, "filename"),
        ({"filename": "digits.keras"}, 400, "at least one profile"),
        (
            {
                "filename": "digits.keras",
                "profile": ["cloud-cpu-onnx", "rpi4-litert-fp16"],
                "publish_to_repository": "true",
            },
            400,
            "publish_profile",
        ),
    ],
)
def test_bad_requests_are_refused_before_any_work(
    ops: httpx.Client, params: dict[str, Any], status: int, message: str
) -> None:
    reply = upload(ops, b"model bytes", **params)
    assert reply.status_code == status
    assert message in reply.json()["error"]


def test_multipart_uploads_are_refused_with_a_hint(ops: httpx.Client) -> None:
    reply = ops.post(
        "/v1/conversions",
        params={"filename": "digits.keras", "profile": "cloud-cpu-onnx"},
        files={"file": ("digits.keras", b"bytes")},
    )
    assert reply.status_code == 415
    assert "raw request body" in reply.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/artifacts/digits/1/..%2F..%2F..%2Fhub.yaml",
        "/v1/artifacts/digits/1/%2e%2e/%2e%2e/config.yaml",
        "/v1/artifacts/../repo/config.yaml",
        "/v1/artifacts/digits/x/manifest.json",
        "/v1/artifacts/.uploads/1/anything",
    ],
)
def test_downloads_stay_inside_the_store(ops: httpx.Client, path: str) -> None:
    reply = ops.get(httpx.URL(f"{ops.base_url}").copy_with(raw_path=path.encode()))
    assert reply.status_code == 404


def test_unknown_job(ops: httpx.Client) -> None:
    reply = ops.get("/v1/conversions/0123456789abcdef")
    assert reply.status_code == 404
    assert "no conversion job" in reply.json()["error"]
