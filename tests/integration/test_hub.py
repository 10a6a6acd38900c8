"""A real ``cloud-hub serve`` process, called with the official Triton HTTP client."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.hub import HubProcess, write_oip_repository

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_oip_repository(tmp_path_factory.mktemp("repo"), cached_classifier=True)


@pytest.fixture(scope="module")
def hub(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = HubProcess(
        repository=repository,
        workdir=tmp_path_factory.mktemp("hub"),
        config={"limits": {"payload_max_bytes": 1_000_000}},
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def client(hub: HubProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(hub.url)
    yield c
    c.close()


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tin = triton.InferInput(name, list(array.shape), datatype)
    tin.set_data_from_numpy(array, binary_data=binary)
    return tin


def _direct(repository: Path, model: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


# -- server and model metadata -------------------------------------------------------------------


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "hybrid-inference-hub"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_config(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    meta = client.get_model_metadata("add_sub")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 4]},
    ]
    config = client.get_model_config("add_sub")
    assert config["max_batch_size"] == 64
    assert config["input"][0] == {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000


# -- inference through tritonclient ----------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("batch", [1, 3, 17])
def test_fp32_two_inputs_two_outputs(
    client: triton.InferenceServerClient, repository: Path, binary: bool, batch: int
) -> None:
    rng = np.random.default_rng(batch)
    a = rng.standard_normal((batch, 4)).astype(np.float32)
    b = rng.standard_normal((batch, 4)).astype(np.float32)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    result = client.infer(
        "add_sub",
        [_input("INPUT0", a, "FP32", binary), _input("INPUT1", b, "FP32", binary)],
        outputs=outputs,
        request_id="r-1",
    )
    expected = _direct(repository, "add_sub", {"INPUT0": a, "INPUT1": b})
    assert result.get_response()["id"] == "r-1"
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected["OUTPUT0"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), expected["OUTPUT1"])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp16(client: triton.InferenceServerClient, binary: bool) -> None:
    x = np.array([[0.5, -1.25, 3.0], [65504 / 4, 1e-3, 0.0]], dtype=np.float16)
    result = client.infer(
        "fp16",
        [_input("x", x, "FP16", binary)],
        outputs=[triton.InferRequestedOutput("y", binary_data=binary)],
    )
    y = result.as_numpy("y")
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x * np.float16(2))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_int64(client: triton.InferenceServerClient, binary: bool) -> None:
    a = np.array([[2**40, -5, 7], [1, 2, 3]], dtype=np.int64)
    b = np.array([[1, 5, -(2**40)], [3, 2, 1]], dtype=np.int64)
    result = client.infer(
        "int64",
        [_input("a", a, "INT64", binary), _input("b", b, "INT64", binary)],
        outputs=[
            triton.InferRequestedOutput("sum", binary_data=binary),
            triton.InferRequestedOutput("diff", binary_data=binary),
        ],
    )
    np.testing.assert_array_equal(result.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(result.as_numpy("diff"), a - b)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bool(client: triton.InferenceServerClient, binary: bool) -> None:
    a = np.array([[True, False, True, False, True]])
    b = np.array([[True, True, False, False, True]])
    result = client.infer(
        "bool",
        [_input("a", a, "BOOL", binary), _input("b", b, "BOOL", binary)],
        outputs=[triton.InferRequestedOutput(n, binary_data=binary) for n in ("not_a", "a_and_b")],
    )
    np.testing.assert_array_equal(result.as_numpy("not_a"), ~a)
    np.testing.assert_array_equal(result.as_numpy("a_and_b"), a & b)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes(client: triton.InferenceServerClient, binary: bool) -> None:
    text = np.array([["héllo", ""], ["wörld", "tensor"]], dtype=object)
    encoded = np.vectorize(lambda s: s.encode(), otypes=[object])(text)
    result = client.infer(
        "strings",
        [_input("text", encoded, "BYTES", binary)],
        outputs=[triton.InferRequestedOutput("same", binary_data=binary)],
    )
    got = result.as_numpy("same")
    as_bytes = [e if isinstance(e, bytes) else e.encode() for e in got.reshape(-1)]
    assert as_bytes == list(encoded.reshape(-1))
    assert got.shape == (2, 2)


def test_model_without_batching_takes_any_shape(client: triton.InferenceServerClient) -> None:
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    result = client.infer("fp64_fixed", [_input("x", x, "FP64", True)])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 3)


def test_all_outputs_when_none_requested(client: triton.InferenceServerClient) -> None:
    a = np.ones((2, 4), np.float32)
    result = client.infer(
        "add_sub", [_input("INPUT0", a, "FP32", True), _input("INPUT1", a, "FP32", True)]
    )
    assert {o["name"] for o in result.get_response()["outputs"]} == {"OUTPUT0", "OUTPUT1"}


def test_classification_extension_with_labels(
    client: triton.InferenceServerClient, repository: Path
) -> None:
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    result = client.infer(
        "classifier",
        [_input("x", x, "FP32", True)],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=True, class_count=3)],
    )
    top = result.as_numpy("probabilities")
    expected = _direct(repository, "classifier", {"x": x})["probabilities"]
    assert top.shape == (2, 3)
    for row in range(2):
        score, index, label = top[row, 0].decode().split(":")
        assert int(index) == int(np.argmax(expected[row]))
        assert label == f"digit-{index}"
        assert float(score) == pytest.approx(float(expected[row].max()), abs=1e-6)


def test_response_cache_answers_repeats(client: triton.InferenceServerClient) -> None:
    x = np.full((1, 64), 0.25, np.float32)
    first = client.infer("classifier", [_input("x", x, "FP32", True)]).as_numpy("probabilities")
    before = client.get_inference_statistics("classifier")["model_stats"][0]["inference_stats"][
        "cache_hit"
    ]["count"]
    again = client.infer("classifier", [_input("x", x, "FP32", True)]).as_numpy("probabilities")
    after = client.get_inference_statistics("classifier")["model_stats"][0]["inference_stats"][
        "cache_hit"
    ]["count"]
    np.testing.assert_array_equal(first, again)
    assert after == before + 1


# -- concurrency and batching --------------------------------------------------------------------


def test_64_concurrent_callers_each_get_their_own_answer(hub: HubProcess, repository: Path) -> None:
    rng = np.random.default_rng(64)
    inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(64)]
    start = threading.Barrier(64)

    def call(i: int) -> np.ndarray:
        c = triton.InferenceServerClient(hub.url)
        try:
            start.wait()
            result = c.infer(
                "add_sub",
                [
                    _input("INPUT0", inputs[i], "FP32", True),
                    _input("INPUT1", inputs[i] * 10, "FP32", True),
                ],
                request_id=str(i),
            )
            assert result.get_response()["id"] == str(i)
            return result.as_numpy("OUTPUT0")
        finally:
            c.close()

    stats_client = triton.InferenceServerClient(hub.url)
    before = stats_client.get_inference_statistics("add_sub")["model_stats"][0]
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(call, range(64)))
    after = stats_client.get_inference_statistics("add_sub")["model_stats"][0]
    stats_client.close()
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, inputs[i] + inputs[i] * 10)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == sum(len(x) for x in inputs)
    assert executions < 64, "requests arriving together should have been batched"


def test_reload_and_unload_under_traffic_lose_no_accepted_request(hub: HubProcess) -> None:
    stop = threading.Event()
    outcomes: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def traffic(seed: int) -> None:
        c = triton.InferenceServerClient(hub.url)
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            x = rng.standard_normal((1, 4)).astype(np.float32)
            try:
                r = c.infer(
                    "add_sub",
                    [_input("INPUT0", x, "FP32", True), _input("INPUT1", x, "FP32", True)],
                )
                ok = np.array_equal(r.as_numpy("OUTPUT0"), x + x)
                outcome: tuple[str, Any] = ("ok" if ok else "wrong", None)
            except InferenceServerException as exc:
                outcome = ("refused", exc.status())
            with lock:
                outcomes.append(outcome)
        c.close()

    admin = triton.InferenceServerClient(hub.url)
    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    for _ in range(3):
        admin.load_model("add_sub")  # reload: a swap that nobody should notice
        time.sleep(0.2)
    with lock:
        during_reload = list(outcomes)
    admin.unload_model("add_sub")
    time.sleep(0.3)
    admin.load_model("add_sub")
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    admin.close()
    assert during_reload
    assert all(kind == "ok" for kind, _ in during_reload), during_reload[:5]
    kinds = {kind for kind, _ in outcomes}
    assert "wrong" not in kinds
    refused = {status for kind, status in outcomes if kind == "refused"}
    assert refused <= {"404", "503", 404, 503}, refused  # refused cleanly, never dropped or failed
    assert outcomes[-1][0] == "ok"


# -- repository control --------------------------------------------------------------------------


def test_repository_index_load_unload(client: triton.InferenceServerClient) -> None:
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert index["add_sub"]["state"] == "READY"
    client.unload_model("bool")
    assert not client.is_model_ready("bool")
    assert {e["name"]: e for e in client.get_model_repository_index()}["bool"][
        "state"
    ] == "UNAVAILABLE"
    client.load_model("bool")
    assert client.is_model_ready("bool")


def test_failed_reload_keeps_the_serving_version(
    client: triton.InferenceServerClient, repository: Path
) -> None:
    (repository / "int64" / "2").mkdir()
    (repository / "int64" / "2" / "model.onnx").write_bytes(b"not an onnx model")
    try:
        with pytest.raises(InferenceServerException, match="failed to load") as info:
            client.load_model("int64")
        assert "previous versions keep serving" in str(info.value)
        assert client.is_model_ready("int64")
        a = np.ones((1, 3), np.int64)
        r = client.infer("int64", [_input("a", a, "INT64", True), _input("b", a, "INT64", True)])
        assert r.get_response()["model_version"] == "1"
        entry = next(e for e in client.get_model_repository_index() if e["name"] == "int64")
        assert "load failed" in entry["reason"]
    finally:
        (repository / "int64" / "2" / "model.onnx").unlink()
        (repository / "int64" / "2").rmdir()
    client.load_model("int64")


def test_models_load_only_from_the_repository(hub: HubProcess) -> None:
    for name in ("..", "../etc", "%2e%2e", ".hidden"):
        status, body = _raw(hub, "POST", f"/v2/repository/models/{name}/load", b"")
        assert status in (404, 405), (name, status, body)
        assert "error" in body


# -- bad input -----------------------------------------------------------------------------------


def _raw(
    hub: HubProcess, method: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        data = reply.read()
        return reply.status, json.loads(data) if data else {}
    finally:
        conn.close()


GOOD = {
    "inputs": [
        {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]},
    ]
}


def _with(**changes: Any) -> bytes:
    body = json.loads(json.dumps(GOOD))
    body["inputs"][0].update(changes)
    return json.dumps(body).encode()


BINARY_HEADER = json.dumps(
    {
        "inputs": [
            {
                "name": "INPUT0",
                "shape": [1, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 16},
            },
            {
                "name": "INPUT1",
                "shape": [1, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 16},
            },
        ]
    }
).encode()


ZERO_HEADER = json.dumps(
    {
        "inputs": [
            {
                "name": "INPUT0",
                "shape": [0, 4294967296, 4294967296],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 0},
            },
            {"name": "INPUT1", "shape": [0, 4], "datatype": "FP32", "data": []},
        ]
    }
).encode()


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "fragment"),
    [
        ("/v2/models/add_sub/infer", b'{"inputs": [', {}, 400, "malformed JSON"),
        ("/v2/models/nope/infer", json.dumps(GOOD).encode(), {}, 404, "no model named 'nope'"),
        (
            "/v2/models/add_sub/versions/7/infer",
            json.dumps(GOOD).encode(),
            {},
            404,
            "has no version '7'",
        ),
        ("/v2/models/add_sub/infer", _with(name="INPUTX"), {}, 400, "has no input 'INPUTX'"),
        (
            "/v2/models/add_sub/infer",
            _with(shape=[2, 2]),
            {},
            400,
            "input 'INPUT0' has shape [2, 2]; model 'add_sub' expects [-1, 4]",
        ),
        (
            "/v2/models/add_sub/infer",
            _with(shape=[1, 3], data=[1, 2, 3]),
            {},
            400,
            "expects [-1, 4]",
        ),
        (
            "/v2/models/add_sub/infer",
            _with(datatype="FP64"),
            {},
            400,
            "input 'INPUT0' is FP64; model 'add_sub' expects FP32",
        ),
        ("/v2/models/add_sub/infer", _with(datatype="FLOAT"), {}, 400, "unknown datatype 'FLOAT'"),
        (
            "/v2/models/add_sub/infer",
            _with(data=[1, 2, 3]),
            {},
            400,
            "shape [1, 4] holds 4 elements but data has 3",
        ),
        (
            "/v2/models/add_sub/infer",
            BINARY_HEADER + bytes(20),
            {"Inference-Header-Content-Length": str(len(BINARY_HEADER))},
            400,
            "binary_data_size is 16 but only 4 bytes of binary data remain",
        ),
        (
            "/v2/models/add_sub/infer",
            BINARY_HEADER + bytes(32),
            {"Inference-Header-Content-Length": str(len(BINARY_HEADER) + 1000)},
            400,
            "Inference-Header-Content-Length is",
        ),
        (
            "/v2/models/add_sub/infer",
            BINARY_HEADER + bytes(32),
            {"Inference-Header-Content-Length": "abc"},
            400,
            "must be a non-negative integer",
        ),
        (
            "/v2/models/add_sub/infer",
            BINARY_HEADER + bytes(32),
            {"Inference-Header-Content-Length": str(len(BINARY_HEADER) - 5)},
            400,
            "malformed JSON",
        ),
        (
            "/v2/models/add_sub/infer",
            json.dumps({**GOOD, "outputs": [{"name": "NOPE"}]}).encode(),
            {},
            400,
            "has no output 'NOPE'",
        ),
        # No elements, but a dimension numpy cannot build: refused by the limits, not a 500.
        (
            "/v2/models/add_sub/infer",
            _with(shape=[0, 100000000000000000000], data=[]),
            {},
            400,
            "dimension 1 is 100000000000000000000; the limit is",
        ),
        (
            "/v2/models/add_sub/infer",
            _with(shape=[9223372036854775808, 0], data=[]),
            {},
            400,
            "dimension 0 is 9223372036854775808; the limit is",
        ),
        (
            "/v2/models/add_sub/infer",
            ZERO_HEADER,
            {"Inference-Header-Content-Length": str(len(ZERO_HEADER))},
            400,
            "dimension 1 is 4294967296; the limit is",
        ),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_the_hub_keeps_serving(
    hub: HubProcess, path: str, body: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    got_status, reply = _raw(hub, "POST", path, body, headers)
    assert got_status == status, reply
    assert fragment in reply["error"], reply["error"]
    ok_status, ok = _raw(hub, "POST", "/v2/models/add_sub/infer", json.dumps(GOOD).encode())
    assert ok_status == 200
    assert ok["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]


def test_oversized_body_is_refused_before_it_is_read(hub: HubProcess) -> None:
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n" + b"{" * 1000
        )
        received = b""
        while b'"}' not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        reply = received.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "request body is 50000000 bytes; the limit is 1000000" in reply
    assert _raw(hub, "POST", "/v2/models/add_sub/infer", json.dumps(GOOD).encode())[0] == 200


def test_oversized_chunked_body_is_refused(hub: HubProcess) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 65536

    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    try:
        conn.request("POST", "/v2/models/add_sub/infer", body=chunks(), encode_chunked=True)
        reply = conn.getresponse()
        assert reply.status == 413
        assert "over the limit of 1000000 bytes" in json.loads(reply.read())["error"]
    finally:
        conn.close()


def test_unknown_endpoint(hub: HubProcess) -> None:
    status, reply = _raw(hub, "GET", "/v3/anything", b"")
    assert status == 404
    assert "no endpoint /v3/anything" in reply["error"]


# -- metrics and statistics ----------------------------------------------------------------------


def test_prometheus_metrics(hub: HubProcess, client: triton.InferenceServerClient) -> None:
    a = np.ones((2, 4), np.float32)
    client.infer("add_sub", [_input("INPUT0", a, "FP32", True), _input("INPUT1", a, "FP32", True)])
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for needle in (
        'hub_request_success_total{model="add_sub",version="1"}',
        'hub_inference_count_total{model="add_sub",version="1"}',
        'hub_execution_count_total{model="add_sub",version="1"}',
        'hub_queue_duration_seconds_bucket{le="0.001",model="add_sub",version="1"}',
        'hub_compute_duration_seconds_count{model="add_sub",version="1"}',
        'hub_batch_size_bucket{le="2.0",model="add_sub",version="1"}',
        'hub_queue_depth{model="add_sub",version="1"}',
        'hub_cache_hits_total{model="classifier",version="1"}',
        'hub_model_loaded{model="add_sub",version="1"} 1.0',
        "hub_models_loaded ",
        'hub_request_failure_total{model="add_sub",reason="BadRequestError",version="1"}',
    ):
        assert needle in text, needle
