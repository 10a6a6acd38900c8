"""Capture through the real app (TestClient, ONNX Runtime): off by default, on per model; every
record matches the request and the cloud answer it came from; opted-out and non-fallback
requests are never kept; the size bound and the retention hold; the API lists, downloads and
deletes shards in the admin scope; the threshold recommendation follows from the records."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.app import create_app
from cloud_hub.capture import Capture, FileShardStore, read_shard
from cloud_hub.metrics import HubMetrics
from cloud_hub.model_config import CaptureConfig
from cloud_hub.settings import load_settings
from cloud_hub.thresholds import recommend
from protocols import decode_request, encode_request
from tests.support import onnx_models
from tests.support.hub import add_model

ADMIN = {"Authorization": "Bearer admin-key-0123456789"}
INFER = {"Authorization": "Bearer infer-key-0123456789"}
RNG = np.random.default_rng(3)


def _app(tmp_path: Path, capture: dict[str, Any] | None) -> TestClient:
    repo = tmp_path / "repo"
    config: dict[str, Any] = {"backend": "onnxruntime", "max_batch_size": 16}
    if capture is not None:
        config["capture"] = capture
    add_model(repo, "clf", config, onnx_models.classifier)
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
    return TestClient(create_app(settings))


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Callable[[dict[str, Any] | None], TestClient]]:
    clients: list[TestClient] = []

    def make(capture: dict[str, Any] | None) -> TestClient:
        client = _app(tmp_path, capture)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _infer(
    client: TestClient, x: np.ndarray, request_id: str, **parameters: Any
) -> tuple[int, np.ndarray | None]:
    body = encode_request({"x": x}, id=request_id, parameters=parameters or None, binary=False)
    reply = client.post(
        "/v2/models/clf/infer",
        content=body.to_bytes(),
        headers={**INFER, "Content-Type": "application/json"},
    )
    if reply.status_code != 200:
        return reply.status_code, None
    out = reply.json()["outputs"][0]
    return 200, np.asarray(out["data"], np.float32).reshape(out["shape"])


def _shards(client: TestClient) -> list[dict[str, np.ndarray]]:
    assert client.post("/v1/capture/flush", headers=ADMIN).status_code == 200
    listed = client.get("/v1/capture/shards", headers=ADMIN).json()["shards"]
    found = []
    for entry in listed:
        data = client.get(f"/v1/capture/shards/{entry['model']}/{entry['shard']}", headers=ADMIN)
        assert data.status_code == 200
        found.append(read_shard(data.content))
    return found


def _metric(client: TestClient, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


FALLBACK = {"fallback_reason": "low_confidence", "device_class": "rpi4", "device_id": "cam-1"}


def test_capture_is_off_unless_the_model_asks(hub: Any, tmp_path: Path) -> None:
    client = hub(None)
    x = RNG.random((2, 64), dtype=np.float32)
    status, _ = _infer(
        client, x, "r1", device_top_class="1,2", device_confidence="0.5,0.4", **FALLBACK
    )
    assert status == 200
    assert _shards(client) == []
    assert not (tmp_path / "repo" / ".capture").exists()


def test_every_record_matches_its_request_and_answer(hub: Any) -> None:
    client = hub({"shard_records": 4})
    sent: dict[str, tuple[np.ndarray, np.ndarray, list[int], list[float]]] = {}
    for i in range(5):
        rows = 1 + i % 3
        x = RNG.random((rows, 64), dtype=np.float32)
        top = [int(v) for v in RNG.integers(0, 10, rows)]
        conf = [float(v) for v in RNG.random(rows)]
        params = (
            {"device_top_class": top[0], "device_confidence": conf[0]}
            if rows == 1
            else {
                "device_top_class": ",".join(map(str, top)),
                "device_confidence": ",".join(map(repr, conf)),
            }
        )
        status, y = _infer(client, x, f"req-{i}", device_model_version="7", **params, **FALLBACK)
        assert status == 200
        assert y is not None
        sent[f"req-{i}"] = (x, y, top, conf)
    # Not fallbacks, or opted out: never kept.
    assert _infer(client, RNG.random((1, 64), dtype=np.float32), "plain")[0] == 200
    status, _ = _infer(
        client, RNG.random((1, 64), dtype=np.float32), "out", capture=False, **FALLBACK
    )
    assert status == 200

    shards = _shards(client)
    records = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}
    total = sum(len(v[0]) for v in sent.values())
    assert len(records["request_id"]) == total
    assert set(records["request_id"]) == set(sent)
    for request_id, (x, y, top, conf) in sent.items():
        mine = records["request_id"] == request_id
        np.testing.assert_array_equal(records["input.x"][mine], x)
        np.testing.assert_array_equal(records["output.probabilities"][mine], y)
        assert records["device_top_class"][mine].tolist() == top
        np.testing.assert_allclose(records["device_confidence"][mine], conf, rtol=1e-6)
    assert set(records["fallback_reason"]) == {"low_confidence"}
    assert set(records["device_class"]) == {"rpi4"}
    assert set(records["device_id"]) == {"cam-1"}
    assert set(records["device_model_version"]) == {"7"}
    assert set(records["model_version"]) == {"1"}
    assert _metric(client, 'hub_capture_records_total{model="clf",outcome="stored"}') == total
    assert _metric(client, 'hub_capture_records_total{model="clf",outcome="opted_out"}') == 1
    listed = client.get("/v1/capture/shards?model=clf", headers=ADMIN).json()
    assert listed["records"] == total
    assert _metric(client, 'hub_capture_stored_bytes{model="clf"}') == listed["size_bytes"]


def test_bad_device_parameters_are_refused_and_nothing_is_kept(hub: Any) -> None:
    client = hub({})
    x = RNG.random((1, 64), dtype=np.float32)
    for bad in ({"device_top_class": "one"}, {"device_confidence": "nan"}, {"capture": "no"}):
        status, _ = _infer(client, x, "bad", **bad, **FALLBACK)
        assert status == 400
    assert _shards(client) == []


def test_a_sample_rate_of_zero_keeps_nothing(hub: Any) -> None:
    client = hub({"sample_rate": 0.0})
    assert _infer(client, RNG.random((1, 64), dtype=np.float32), "r", **FALLBACK)[0] == 200
    assert _shards(client) == []
    assert _metric(client, 'hub_capture_records_total{model="clf",outcome="sampled_out"}') == 1


def test_the_size_bound_holds_oldest_first(hub: Any) -> None:
    client = hub({"shard_records": 1, "max_bytes": 6000})
    for i in range(12):
        assert _infer(client, RNG.random((1, 64), dtype=np.float32), f"r{i}", **FALLBACK)[0] == 200
        client.post("/v1/capture/flush", headers=ADMIN)
    listed = client.get("/v1/capture/shards", headers=ADMIN).json()
    assert 0 < listed["size_bytes"] <= 6000
    kept = [
        read_shard(client.get(f"/v1/capture/shards/clf/{s['shard']}", headers=ADMIN).content)
        for s in listed["shards"]
    ]
    ids = [str(s["request_id"][0]) for s in kept]
    assert ids == [f"r{i}" for i in range(12 - len(ids), 12)]  # the newest stay
    assert _metric(
        client, 'hub_capture_shards_deleted_total{model="clf",reason="size"}'
    ) == 12 - len(ids)


def test_shards_past_their_retention_are_deleted(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = FileShardStore(tmp_path)
    capture = Capture(store, HubMetrics(), clock=lambda: now[0])
    config = CaptureConfig(retention_s=100, shard_records=1)
    request = decode_request(
        encode_request({"x": np.ones((1, 4), np.float32)}, id="a").to_bytes(), None
    )
    from cloud_hub.capture import DeviceReport

    def record() -> None:
        capture.record(
            model="m",
            model_version="1",
            config=config,
            batched=True,
            decoded=request,
            outputs={"y": np.ones((1, 2), np.float32)},
            report=DeviceReport(fallback_reason="low_confidence"),
            device_id="d",
        )
        capture.flush()

    record()
    now[0] += 60
    record()
    assert len(capture.shards("m")) == 2
    now[0] += 50  # the first is 110 s old, the second 50 s
    assert [s.created_s for s in capture.shards("m")] == [now[0] - 50]
    now[0] += 60
    capture.sweep()
    assert store.list("m") == []


def test_the_api_is_admin_only_and_deletes(hub: Any) -> None:
    client = hub({"shard_records": 1})
    for i in range(3):
        _infer(client, RNG.random((1, 64), dtype=np.float32), f"r{i}", **FALLBACK)
        # One shard each: the writer thread may otherwise find two records already buffered.
        client.post("/v1/capture/flush", headers=ADMIN)
    assert client.get("/v1/capture/shards", headers=INFER).status_code == 403
    assert client.delete("/v1/capture/shards/clf", headers=INFER).status_code == 403
    shards = client.get("/v1/capture/shards", headers=ADMIN).json()["shards"]
    assert len(shards) == 3
    first = shards[0]["shard"]
    assert client.delete(f"/v1/capture/shards/clf/{first}", headers=ADMIN).json() == {"deleted": 1}
    assert client.delete(f"/v1/capture/shards/clf/{first}", headers=ADMIN).status_code == 404
    assert client.get(f"/v1/capture/shards/clf/{first}", headers=ADMIN).status_code == 404
    assert client.get("/v1/capture/shards/clf/..%2F..%2Fx", headers=ADMIN).status_code == 404
    assert client.delete("/v1/capture/shards/clf", headers=ADMIN).json() == {"deleted": 2}
    assert client.get("/v1/capture/shards", headers=ADMIN).json()["shards"] == []


def _brute_force(conf: np.ndarray, right: np.ndarray, target: float) -> tuple[float, float]:
    for t in [0.0, *sorted({float(np.nextafter(c, np.inf)) for c in conf})]:
        to_cloud = conf < t
        accuracy = float(np.mean(to_cloud | right))
        if accuracy >= target:
            return t, float(np.mean(to_cloud))
    raise AssertionError("unreachable: every record to the cloud is always right")


def test_the_recommended_threshold_is_the_least_cloud_share_that_keeps_the_target() -> None:
    rng = np.random.default_rng(0)
    n = 400
    conf = rng.random(n)
    cloud = rng.integers(0, 10, n)
    right = rng.random(n) < 0.4 + 0.6 * conf  # surer answers are right more often
    top = np.where(right, cloud, (cloud + 1) % 10)
    shard = {
        "output.p": np.eye(10, dtype=np.float32)[cloud],
        "device_top_class": top,
        "device_confidence": conf.astype(np.float32),
        "device_class": np.asarray(["a"] * n),
        "device_model_version": np.asarray(["1"] * n),
    }
    conf32 = conf.astype(np.float32).astype(np.float64)
    for target in (0.8, 0.9, 0.97, 1.0):
        found = recommend([shard], target_accuracy=target)
        assert found.records == n
        assert found.recommended is not None
        threshold, share = _brute_force(conf32, right, target)
        assert found.recommended.threshold == pytest.approx(threshold)
        assert found.recommended.cloud_share == pytest.approx(share)
        assert found.recommended.accuracy >= target
        shares = [p.cloud_share for p in found.curve]
        assert shares == sorted(shares)
    assert recommend([shard], target_accuracy=0.9, device_class="b").records == 0


def test_the_thresholds_endpoint_reads_the_captured_records(hub: Any) -> None:
    client = hub({})
    for i in range(20):
        x = RNG.random((1, 64), dtype=np.float32)
        _, y = _infer(client, x, f"q{i}", **FALLBACK)
        assert y is not None
        cloud = int(y.argmax())
        top = cloud if i % 4 else (cloud + 1) % 10  # every fourth device answer is wrong
        _infer(client, x, f"r{i}", device_top_class=top, device_confidence=i / 20, **FALLBACK)
    client.post("/v1/capture/flush", headers=ADMIN)
    reply = client.get(
        "/v1/capture/thresholds?model=clf&target_accuracy=1.0&device_class=rpi4", headers=ADMIN
    )
    assert reply.status_code == 200
    found = reply.json()
    assert found["records"] == 20
    # Wrong answers at confidences 0, 0.2, 0.4, 0.6, 0.8: all must go to the cloud.
    assert found["recommended"]["cloud_share"] == pytest.approx(17 / 20)
    assert 0.8 < found["recommended"]["threshold"] <= 0.85
