"""Three hub replicas sharing one store, behind a round-robin proxy: any replica answers any
upload, release, download or conversion, and a replica killed at any moment loses nothing.

Every test runs twice: with the filesystem store on a folder all replicas share, and with the S3
store on a bucket of an S3 API server process (moto's standalone server). The replicas share a
broker; each has its own (empty) model repository, since hub state lives in the store alone.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocols import ModelAnnouncement, fleet_models_topic
from tests.support.broker import Broker
from tests.support.fallback import Watcher, agent_starter, wait_hub_connected
from tests.support.hub import HubProcess, console_script
from tests.support.models import DigitsModels, ensure_digits_models, require
from tests.support.round_robin import RoundRobinProxy
from tests.support.store import S3Server, SharedStore, filesystem_store, s3_store
from tests.support.updates import (
    Keys,
    agent_settings,
    announcement,
    inject,
    make_artifact,
    make_keys,
    publish,
    sign,
    update_detail,
    wait_until,
)

pytestmark = pytest.mark.integration

LEASE_S = 3.0
JOB_TIMEOUT_S = 300.0


@dataclass
class Cluster:
    store: SharedStore
    broker: Broker
    replicas: list[HubProcess]
    proxy: RoundRobinProxy

    def restart(self, index: int) -> None:
        self.replicas[index].start()
        wait_hub_connected(self.replicas[index])


@pytest.fixture(scope="module")
def digits() -> DigitsModels:
    return require(ensure_digits_models)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(workdir=tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(workdir=tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["filesystem", "s3"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, broker: Broker
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp(f"cluster-{request.param}")
    if request.param == "s3":
        store = s3_store(request.getfixturevalue("s3_server"), "hub-replicas")
    else:
        store = filesystem_store(root / "shared-store")
    replicas = []
    for index in range(3):
        workdir = root / f"replica-{index}"
        (workdir / "repo").mkdir(parents=True)
        replicas.append(
            HubProcess(
                repository=workdir / "repo",
                workdir=workdir,
                env=store.env,
                config={
                    "mqtt": {"broker": broker.address},
                    "store": store.config,
                    "conversions": {
                        "lease_s": LEASE_S,
                        "poll_s": 0.5,
                        "work_dir": str(workdir / "scratch"),
                    },
                    "announce_interval_s": 1.0,
                },
            )
        )
    for hub in replicas:
        hub.start()
        wait_hub_connected(hub)
    proxy = RoundRobinProxy(targets=[("127.0.0.1", hub.port) for hub in replicas])
    proxy.start()
    yield Cluster(store=store, broker=broker, replicas=replicas, proxy=proxy)
    proxy.stop()
    for hub in replicas:
        hub.stop()


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Any]:
    with agent_starter(tmp_path) as make:
        yield make


def retained(broker: Broker, device_class: str) -> ModelAnnouncement:
    watcher = Watcher(broker, fleet_models_topic(device_class))
    try:
        return ModelAnnouncement.model_validate_json(watcher.next(5).payload)
    finally:
        watcher.close()


def versions(announcement: ModelAnnouncement) -> list[str]:
    return [r["signed"]["manifest"]["version"] for r in announcement.releases]


def _signed(tmp_path: Path, digits: DigitsModels, keys: Keys, kind: str, version: str, cls: str):
    folder = make_artifact(
        tmp_path / f"{cls}-{version}",
        digits.model(kind),
        version=version,
        device_class=cls,
        profile=f"{cls}-litert",
    )
    sign(folder, [keys])
    return folder


def test_publish_across_replicas_reaches_an_agent_resuming_on_another_replica(
    tmp_path: Path, cluster: Cluster, digits: DigitsModels, keys: Keys, make_agent: Any
) -> None:
    cls = f"rep-publish-{cluster.store.kind}"
    proxy = cluster.proxy
    agent = make_agent(
        agent_settings(
            cluster.broker,
            proxy.address,
            [keys],
            digits.model("fp32"),
            device_class=cls,
            device_id=f"dev-{cls}",
            retry_s=0.5,
        )
    )
    folder = _signed(tmp_path, digits, keys, "fp16", "2", cls)
    size = (folder / "model.tflite").stat().st_size
    # the device's first download is cut halfway; it resumes with a Range request
    proxy.cut_response("/v1/artifacts/digits/2/", after_bytes=size // 2)
    done = subprocess.run(
        [
            console_script("model-convert"),
            "publish",
            str(folder),
            "--hub",
            f"http://{proxy.address}",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["announced"] is True
    (upload,) = proxy.requests("PUT /v1/uploads/")
    (release,) = proxy.requests("POST /v1/releases")
    assert upload.target != release.target  # two replicas: the upload reached only the first

    wait_until(lambda: update_detail(agent).get("state") == "installed", 60, "installed")
    downloads = proxy.requests("GET /v1/artifacts/digits/2/")
    assert len(downloads) >= 2
    first, resumed = downloads[0], downloads[-1]
    assert "range:" not in first.request_head.lower()
    assert "range: bytes=" in resumed.request_head.lower()
    assert resumed.target != first.target
    assert agent.metric('edge_agent_model_version{model="digits"}') == 2.0
    assert versions(retained(cluster.broker, cls)) == ["2"]


def test_a_killed_replica_loses_no_release_and_the_announcement_stays_newest(
    tmp_path: Path, cluster: Cluster, digits: DigitsModels, keys: Keys
) -> None:
    cls = f"rep-kill-{cluster.store.kind}"
    first, second, _ = cluster.replicas
    publish(_signed(tmp_path, digits, keys, "fp16", "2", cls), first.url)
    publish(_signed(tmp_path, digits, keys, "int8", "3", cls), second.url)
    # another replica's periodic check may have read the store just before version 3 landed
    # and announce the older view last; within announce_interval_s the newest is back
    wait_until(lambda: versions(retained(cluster.broker, cls)) == ["3"], 15, "newest retained")

    # a replica that read the store before version 3 announced last: the others put it right
    stale = _signed(tmp_path / "stale", digits, keys, "fp16", "2", cls)
    inject(
        cluster.broker, announcement([json.loads((stale / "release.json").read_text())], cls), cls
    )
    wait_until(lambda: versions(retained(cluster.broker, cls)) == ["3"], 15, "newest retained")

    second.stop(signal.SIGKILL)
    publish(_signed(tmp_path, digits, keys, "fp16", "4", cls), first.url)
    cluster.restart(1)
    wait_until(lambda: versions(retained(cluster.broker, cls)) == ["4"], 15, "newest retained")

    for hub in cluster.replicas:
        listed = httpx.get(f"http://{hub.url}/v1/artifacts", params={"device_class": cls}).json()
        assert [(a["version"], a["signed"]) for a in listed["artifacts"]] == [
            ("4", True),
            ("3", True),
            ("2", True),
        ]
        model = httpx.get(f"http://{hub.url}{listed['artifacts'][0]['files']['model']}")
        assert hashlib.sha256(model.content).hexdigest() == listed["artifacts"][0]["sha256"]


def test_a_conversion_survives_its_replica_and_finishes_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    from tests.unit.converters.sources import ensure_digits_source

    source = require(ensure_digits_source)
    first, second, third = cluster.replicas
    name = f"survivor-{cluster.store.kind}"
    reply = httpx.post(
        f"http://{first.url}/v1/conversions",
        params={"filename": "digits.keras", "profile": "rpi4-litert-fp16", "name": name},
        content=source.keras.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]

    def running_on_first() -> dict[str, Any] | None:
        job = httpx.get(f"http://{second.url}/v1/conversions/{job_id}").json()
        return job if job["state"] == "running" and job["worker"]["attempt"] == 1 else None

    job = wait_until(running_on_first, 60, "the job running on replica 1")
    killed = job["worker"]["replica"]
    # At once: on a loaded machine a pause here may let the first attempt finish before the kill.
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert httpx.get(f"http://{second.url}/v1/conversions/{job_id}").json()["state"] == "running"

    def finished() -> dict[str, Any] | None:
        job = httpx.get(f"http://{third.url}/v1/conversions/{job_id}").json()
        return job if job["state"] in ("succeeded", "failed") else None

    job = wait_until(finished, JOB_TIMEOUT_S, "the job finished")
    assert job["state"] == "succeeded", job["error"]
    assert job["worker"]["replica"] != killed
    assert job["worker"]["attempt"] >= 2
    (artifact,) = job["artifacts"]
    cluster.restart(0)

    bodies = set()
    for hub in cluster.replicas:
        model = httpx.get(f"http://{hub.url}{artifact['files']['model']}")
        assert model.status_code == 200
        bodies.add(model.content)
        assert httpx.get(f"http://{hub.url}/v1/conversions/{job_id}").json()["state"] == (
            "succeeded"
        )
    (body,) = bodies
    assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
    listed = httpx.get(f"http://{second.url}/v1/artifacts", params={"name": name}).json()
    assert [(a["version"], a["profile"]) for a in listed["artifacts"]] == [
        ("1", "rpi4-litert-fp16")
    ]
    # finished once: one replica recorded the outcome
    finishers = [hub for hub in cluster.replicas if f"conversion {job_id} succeeded" in hub.log]
    assert len(finishers) == 1
    log = httpx.get(f"http://{second.url}/v1/conversions/{job_id}/log")
    assert log.status_code == 200
    assert "--- attempt" in log.text


def test_a_replica_reads_the_store_at_start_and_lists_what_others_stored(
    cluster: Cluster,
) -> None:
    listed = [
        json.loads(urllib.request.urlopen(f"http://{hub.url}/v1/artifacts", timeout=10).read())[
            "artifacts"
        ]
        for hub in cluster.replicas
    ]
    assert listed[0] == listed[1] == listed[2]
    assert listed[0]
