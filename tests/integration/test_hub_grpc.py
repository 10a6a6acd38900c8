"""A real ``cloud-hub serve`` process over gRPC, called with Triton's gRPC clients (sync and asyncio)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.support.broker import free_port
from tests.support.hub import HubProcess, write_oip_repository

pytestmark = pytest.mark.integration

API_KEY = "grpc-infer-key-0123456789"
ADMIN_KEY = "grpc-admin-key-0123456789"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_oip_repository(tmp_path_factory.mktemp("repo"), scaled_dtypes=True)


@pytest.fixture(scope="module")
def hub(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = HubProcess(
        repository=repository,
        workdir=tmp_path_factory.mktemp("hub"),
        config={"limits": {"payload_max_bytes": 1_000_000}},
        grpc_port=free_port(),
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def client(hub: HubProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(hub.grpc_url)
    yield c
    c.close()


def _input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tin = triton.InferInput(name, list(array.shape), datatype)
    tin.set_data_from_numpy(array)
    return tin


def _direct(repository: Path, model: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _status(exc: InferenceServerException) -> str:
    return str(exc.status()).removeprefix("StatusCode.")


# -- server and model metadata -------------------------------------------------------------------


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "hybrid-inference-hub"
    assert "model_repository" in meta["extensions"]


def test_model_metadata_and_config(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "7")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("add_sub", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "4"]},
        {"name": "INPUT1", "datatype": "FP32", "shape": ["-1", "4"]},
    ]
    config = client.get_model_config("add_sub", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    assert config["input"][0] == {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": ["4"]}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"
    assert config["platform"] == "onnxruntime_onnx"


# -- inference: every datatype, several inputs and outputs -------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_fp32_two_inputs_two_outputs(
    client: triton.InferenceServerClient, repository: Path, batch: int
) -> None:
    rng = np.random.default_rng(batch)
    a = rng.standard_normal((batch, 4)).astype(np.float32)
    b = rng.standard_normal((batch, 4)).astype(np.float32)
    result = client.infer(
        "add_sub",
        [_input("INPUT0", a, "FP32"), _input("INPUT1", b, "FP32")],
        outputs=[triton.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")],
        request_id="r-1",
    )
    expected = _direct(repository, "add_sub", {"INPUT0": a, "INPUT1": b})
    response = result.get_response()
    assert response.id == "r-1"
    assert response.model_version == "1"
    assert response.parameters["served_by"].string_param == "cloud"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected["OUTPUT0"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), expected["OUTPUT1"])


def test_one_output_of_two(client: triton.InferenceServerClient) -> None:
    a = np.ones((2, 4), np.float32)
    result = client.infer(
        "add_sub",
        [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")],
        outputs=[triton.InferRequestedOutput("OUTPUT1")],
    )
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((2, 4), np.float32))


def test_fp16_raw_contents(client: triton.InferenceServerClient) -> None:
    x = np.array([[0.5, -1.25, 3.0], [65504 / 4, 1e-3, 0.0]], dtype=np.float16)
    result = client.infer("fp16", [_input("x", x, "FP16")])
    y = result.as_numpy("y")
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x * np.float16(2))


@pytest.mark.parametrize(
    ("model", "dtype", "datatype"),
    [
        ("int8", np.int8, "INT8"),
        ("uint16", np.uint16, "UINT16"),
        ("int32", np.int32, "INT32"),
        ("uint32", np.uint32, "UINT32"),
        ("uint64", np.uint64, "UINT64"),
        ("fp32", np.float32, "FP32"),
        ("fp64_fixed", np.float64, "FP64"),
    ],
)
def test_numeric_datatypes(
    client: triton.InferenceServerClient, model: str, dtype: type, datatype: str
) -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=dtype)
    factor = 3 if model == "fp64_fixed" else 2
    y = client.infer(model, [_input("x", x, datatype)]).as_numpy("y")
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, x * dtype(factor))


def test_int64_and_bool(client: triton.InferenceServerClient) -> None:
    a = np.array([[2**40, -5, 7], [1, 2, 3]], dtype=np.int64)
    b = np.array([[1, 5, -(2**40)], [3, 2, 1]], dtype=np.int64)
    r = client.infer("int64", [_input("a", a, "INT64"), _input("b", b, "INT64")])
    np.testing.assert_array_equal(r.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(r.as_numpy("diff"), a - b)
    p = np.array([[True, False, True, False, True]])
    q = np.array([[True, True, False, False, True]])
    r = client.infer("bool", [_input("a", p, "BOOL"), _input("b", q, "BOOL")])
    np.testing.assert_array_equal(r.as_numpy("not_a"), ~p)
    np.testing.assert_array_equal(r.as_numpy("a_and_b"), p & q)


def test_bytes_raw_contents(client: triton.InferenceServerClient) -> None:
    text = np.array([["héllo".encode(), b""], ["wörld".encode(), b"tensor"]], dtype=object)
    got = client.infer("strings", [_input("text", text, "BYTES")]).as_numpy("same")
    assert got.shape == (2, 2)
    assert list(got.reshape(-1)) == list(text.reshape(-1))


def test_classification_extension(client: triton.InferenceServerClient, repository: Path) -> None:
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    result = client.infer(
        "classifier",
        [_input("x", x, "FP32")],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=3)],
    )
    top = result.as_numpy("probabilities")
    expected = _direct(repository, "classifier", {"x": x})["probabilities"]
    assert top.shape == (2, 3)
    for row in range(2):
        _score, index, label = top[row, 0].decode().split(":")
        assert int(index) == int(np.argmax(expected[row]))
        assert label == f"digit-{index}"


# -- typed contents, as other clients send them ------------------------------------------------------


@pytest.fixture
def stub(hub: HubProcess) -> Iterator[Any]:
    channel = grpc.insecure_channel(hub.grpc_url)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _typed(name: str, datatype: str, shape: list[int], field: str, values: list[Any]) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return tensor


def test_typed_contents(stub: Any) -> None:
    request = pb.ModelInferRequest(
        model_name="add_sub",
        inputs=[
            _typed("INPUT0", "FP32", [1, 4], "fp32_contents", [1, 2, 3, 4]),
            _typed("INPUT1", "FP32", [1, 4], "fp32_contents", [1, 1, 1, 1]),
        ],
    )
    response = stub.ModelInfer(request)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [2, 3, 4, 5]
    request = pb.ModelInferRequest(
        model_name="strings",
        inputs=[_typed("text", "BYTES", [1, 2], "bytes_contents", [b"a", b""])],
    )
    response = stub.ModelInfer(request)
    assert bytes(response.raw_output_contents[0]) == b"\x01\x00\x00\x00a\x00\x00\x00\x00"
    request = pb.ModelInferRequest(
        model_name="int8", inputs=[_typed("x", "INT8", [1, 3], "int_contents", [-3, 0, 60])]
    )
    response = stub.ModelInfer(request)
    assert np.frombuffer(response.raw_output_contents[0], np.int8).tolist() == [-6, 0, 120]


# -- bad input: Triton's status codes, and the hub keeps serving ---------------------------------------


def _request(first: dict[str, Any] | None = None, **changes: Any) -> Any:
    """A good add_sub request, with ``first`` changing fields of INPUT0."""
    good = np.arange(4, dtype=np.float32).tobytes()
    input0 = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], **(first or {})}
    fields: dict[str, Any] = {
        "model_name": "add_sub",
        "inputs": [
            pb.ModelInferRequest.InferInputTensor(**input0),
            pb.ModelInferRequest.InferInputTensor(name="INPUT1", datatype="FP32", shape=[1, 4]),
        ],
        "raw_input_contents": [good, good],
        **changes,
    }
    return pb.ModelInferRequest(**fields)


BAD = [
    ("unknown model", _request(model_name="nope"), "NOT_FOUND", "no model named 'nope'"),
    ("unknown version", _request(model_version="7"), "NOT_FOUND", "has no version '7'"),
    (
        "unknown input",
        _request({"name": "X"}),
        "INVALID_ARGUMENT",
        "has no input",
    ),
    (
        "wrong shape",
        _request({"shape": [2, 2]}),
        "INVALID_ARGUMENT",
        "input 'INPUT0' has shape [2, 2]; model 'add_sub' expects [-1, 4]",
    ),
    (
        "wrong datatype",
        _request({"datatype": "FP64", "shape": [1, 2]}),
        "INVALID_ARGUMENT",
        "input 'INPUT0' is FP64; model 'add_sub' expects FP32",
    ),
    (
        "unknown datatype",
        _request({"datatype": "FLOAT"}),
        "INVALID_ARGUMENT",
        "unknown datatype 'FLOAT'",
    ),
    (
        "short raw contents",
        _request(raw_input_contents=[bytes(12), bytes(16)]),
        "INVALID_ARGUMENT",
        "needs 16 bytes",
    ),
    (
        "raw contents for one input of two",
        _request(raw_input_contents=[bytes(16)]),
        "INVALID_ARGUMENT",
        "expected 2 raw_input_contents",
    ),
    (
        "unknown output",
        _request(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="NOPE")]),
        "INVALID_ARGUMENT",
        "has no output 'NOPE'",
    ),
    (
        "FP16 in typed contents",
        pb.ModelInferRequest(
            model_name="fp16", inputs=[_typed("x", "FP16", [1, 1], "fp32_contents", [1.0])]
        ),
        "INVALID_ARGUMENT",
        "FP16 has no typed contents field",
    ),
    (
        "typed contents of the wrong count",
        pb.ModelInferRequest(
            model_name="int64", inputs=[_typed("a", "INT64", [1, 3], "int64_contents", [1, 2])]
        ),
        "INVALID_ARGUMENT",
        "holds 3 elements but int64_contents has 2",
    ),
    (
        "INT8 value out of range",
        pb.ModelInferRequest(
            model_name="int8", inputs=[_typed("x", "INT8", [1, 1], "int_contents", [300])]
        ),
        "INVALID_ARGUMENT",
        "outside INT8's range",
    ),
    (
        "batch over the limit",
        pb.ModelInferRequest(
            model_name="int8",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT8", shape=[9, 1])],
            raw_input_contents=[bytes(9)],
        ),
        "INVALID_ARGUMENT",
        "takes 1 to 8",
    ),
    (
        "bad BYTES framing",
        pb.ModelInferRequest(
            model_name="strings",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1, 1])
            ],
            raw_input_contents=[b"\x09\x00\x00\x00abc"],
        ),
        "INVALID_ARGUMENT",
        "declares 9 bytes",
    ),
    (
        "body over the limit",
        _request(raw_input_contents=[bytes(1_100_000), bytes(16)]),
        "RESOURCE_EXHAUSTED",
        "",
    ),
]


@pytest.mark.parametrize(("case", "request_", "code", "fragment"), BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_tritons_status_and_the_hub_keeps_serving(
    stub: Any, case: str, request_: Any, code: str, fragment: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request_)
    assert info.value.code().name == code, info.value.details()
    assert fragment in (info.value.details() or ""), info.value.details()
    response = stub.ModelInfer(_request())
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [0, 2, 4, 6]


def test_tritonclient_sees_the_status(client: triton.InferenceServerClient) -> None:
    a = np.ones((1, 3), np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_sub", [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")])
    assert _status(info.value) == "INVALID_ARGUMENT"
    assert "expects [-1, 4]" in info.value.message()


# -- batching, streaming and the asyncio client -----------------------------------------------------


def test_64_concurrent_callers_are_batched(hub: HubProcess) -> None:
    rng = np.random.default_rng(64)
    inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(64)]

    async def main() -> list[np.ndarray]:
        c = triton_aio.InferenceServerClient(hub.grpc_url)
        try:
            before = (await c.get_inference_statistics("add_sub", as_json=True))["model_stats"][0]

            async def call(i: int) -> np.ndarray:
                ins = [
                    triton_aio.InferInput(n, list(inputs[i].shape), "FP32")
                    for n in ("INPUT0", "INPUT1")
                ]
                ins[0].set_data_from_numpy(inputs[i])
                ins[1].set_data_from_numpy(inputs[i] * 10)
                r = await c.infer("add_sub", ins, request_id=str(i))
                assert r.get_response().id == str(i)
                return r.as_numpy("OUTPUT0")

            answers = await asyncio.gather(*(call(i) for i in range(64)))
            after = (await c.get_inference_statistics("add_sub", as_json=True))["model_stats"][0]
        finally:
            await c.close()
        inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
        executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
        assert inferences == sum(len(x) for x in inputs)
        assert executions < 64, "requests arriving together should have been batched"
        return answers

    answers = asyncio.run(main())
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, inputs[i] + inputs[i] * 10)


def test_stream_answers_each_request_and_survives_a_bad_one(
    client: triton.InferenceServerClient,
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        sent = {}
        for i in range(20):
            x = np.full((1, 4), i, np.float32)
            model = "nope" if i == 7 else "add_sub"
            sent[str(i)] = x
            client.async_stream_infer(
                model, [_input("INPUT0", x, "FP32"), _input("INPUT1", x, "FP32")], request_id=str(i)
            )
        got = [answers.get(timeout=10) for _ in range(20)]
    finally:
        client.stop_stream()
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1
    assert "no model named 'nope'" in errors[0].message()
    results = {r.get_response().id: r for r, e in got if e is None}
    assert set(results) == set(sent) - {"7"}
    for rid, result in results.items():
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), sent[rid] * 2)


def test_asyncio_stream(hub: HubProcess) -> None:
    async def main() -> dict[str, np.ndarray]:
        c = triton_aio.InferenceServerClient(hub.grpc_url)

        async def requests() -> Any:
            for i in range(10):
                x = np.full((2, 3), i, np.int64)
                ins = [triton_aio.InferInput(n, [2, 3], "INT64") for n in ("a", "b")]
                ins[0].set_data_from_numpy(x)
                ins[1].set_data_from_numpy(x)
                yield {"model_name": "int64", "inputs": ins, "request_id": str(i)}

        out: dict[str, np.ndarray] = {}
        try:
            async for result, error in c.stream_infer(requests()):
                assert error is None, error
                out[result.get_response().id] = result.as_numpy("sum")
                if len(out) == 10:
                    break
        finally:
            await c.close()
        return out

    out = asyncio.run(main())
    assert sorted(out, key=int) == [str(i) for i in range(10)]
    for rid, value in out.items():
        np.testing.assert_array_equal(value, np.full((2, 3), 2 * int(rid), np.int64))


# -- statistics and repository control --------------------------------------------------------------


def test_statistics(client: triton.InferenceServerClient) -> None:
    a = np.ones((2, 4), np.float32)
    client.infer("add_sub", [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")])
    stats = client.get_inference_statistics("add_sub", as_json=True)["model_stats"]
    assert stats[0]["name"] == "add_sub"
    assert int(stats[0]["inference_stats"]["success"]["count"]) >= 1
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {"add_sub", "int64", "strings"} <= {s["name"] for s in everything}
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("nope")
    assert _status(info.value) == "NOT_FOUND"


def test_repository_index_load_unload(client: triton.InferenceServerClient) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["add_sub"]["state"] == "READY"
    client.unload_model("bool")
    assert not client.is_model_ready("bool")
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["bool"]["state"] == "UNAVAILABLE"
    p = np.array([[True, False, True, False, True]])
    with pytest.raises(InferenceServerException) as info:
        client.infer("bool", [_input("a", p, "BOOL"), _input("b", p, "BOOL")])
    assert _status(info.value) == "UNAVAILABLE"
    assert "is not loaded" in info.value.message()
    client.load_model("bool")
    assert client.is_model_ready("bool")
    r = client.infer("bool", [_input("a", p, "BOOL"), _input("b", p, "BOOL")])
    np.testing.assert_array_equal(r.as_numpy("a_and_b"), p)


def test_failed_load_is_reported_and_the_old_version_serves(
    client: triton.InferenceServerClient, repository: Path
) -> None:
    (repository / "int64" / "2").mkdir()
    (repository / "int64" / "2" / "model.onnx").write_bytes(b"not an onnx model")
    try:
        with pytest.raises(InferenceServerException, match="failed to load") as info:
            client.load_model("int64")
        assert _status(info.value) == "INTERNAL"
        assert client.is_model_ready("int64")
    finally:
        (repository / "int64" / "2" / "model.onnx").unlink()
        (repository / "int64" / "2").rmdir()
    client.load_model("int64")


# -- access: the same keys, scopes and loopback rule as HTTP ----------------------------------------


@pytest.fixture(scope="module")
def secured_hub(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = HubProcess(
        repository=repository,
        workdir=tmp_path_factory.mktemp("secured"),
        config={
            "load_models": ["add_sub"],
            "auth": {
                "api_keys": [
                    {"name": "app", "key": API_KEY, "scopes": ["infer"]},
                    {"name": "ops", "key": ADMIN_KEY, "scopes": ["infer", "admin"]},
                    {
                        "name": "slow",
                        "key": "grpc-slow-key-0123456789",
                        "rate_limit_per_s": 1,
                        "burst": 2,
                    },
                ]
            },
        },
        grpc_port=free_port(),
    )
    process.start()
    yield process
    process.stop()


def test_credentials_scopes_and_rate_limits(secured_hub: HubProcess) -> None:
    c = triton.InferenceServerClient(secured_hub.grpc_url)
    a = np.ones((1, 4), np.float32)
    inputs = [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")]
    try:
        assert c.is_server_live()
        with pytest.raises(InferenceServerException) as info:
            c.infer("add_sub", inputs)
        assert _status(info.value) == "UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as info:
            c.infer("add_sub", inputs, headers={"authorization": "Bearer wrong-key-0123456789ab"})
        assert _status(info.value) == "UNAUTHENTICATED"
        r = c.infer("add_sub", inputs, headers={"authorization": f"Bearer {API_KEY}"})
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a * 2)
        r = c.infer("add_sub", inputs, headers={"x-api-key": API_KEY})
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a * 2)
        with pytest.raises(InferenceServerException) as info:
            c.unload_model("add_sub", headers={"authorization": f"Bearer {API_KEY}"})
        assert _status(info.value) == "PERMISSION_DENIED"
        index = c.get_model_repository_index(headers={"x-api-key": ADMIN_KEY}, as_json=True)
        assert any(m["name"] == "add_sub" for m in index["models"])
        codes = []
        for _ in range(5):
            try:
                c.infer("add_sub", inputs, headers={"x-api-key": "grpc-slow-key-0123456789"})
                codes.append("OK")
            except InferenceServerException as exc:
                codes.append(_status(exc))
        assert codes[:2] == ["OK", "OK"]
        assert "RESOURCE_EXHAUSTED" in codes[2:]
    finally:
        c.close()


def test_stream_checks_credentials_per_request(secured_hub: HubProcess) -> None:
    c = triton.InferenceServerClient(secured_hub.grpc_url)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    a = np.ones((1, 4), np.float32)
    try:
        c.start_stream(
            callback=lambda result, error: answers.put((result, error)),
            headers={"x-api-key": "not-a-key-0123456789"},
        )
        c.async_stream_infer("add_sub", [_input("INPUT0", a, "FP32"), _input("INPUT1", a, "FP32")])
        result, error = answers.get(timeout=10)
        assert result is None
        assert "invalid API key" in error.message()
    finally:
        c.stop_stream()
        c.close()


def test_threads_share_one_channel(hub: HubProcess) -> None:
    c = triton.InferenceServerClient(hub.grpc_url)
    barrier = threading.Barrier(16)

    def call(i: int) -> bool:
        x = np.full((1, 4), i, np.float32)
        barrier.wait()
        r = c.infer("add_sub", [_input("INPUT0", x, "FP32"), _input("INPUT1", x, "FP32")])
        return bool(np.array_equal(r.as_numpy("OUTPUT1"), np.zeros((1, 4), np.float32)))

    try:
        with ThreadPoolExecutor(16) as pool:
            assert all(pool.map(call, range(16)))
    finally:
        c.close()


def test_a_taken_grpc_port_stops_the_hub_with_a_clear_message(
    repository: Path, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        hub = HubProcess(
            repository=repository,
            workdir=tmp_path,
            config={"load_models": ["add_sub"]},
            grpc_port=taken.getsockname()[1],
        )
        with pytest.raises(RuntimeError, match="cloud-hub exited"):
            hub.start()
    assert f"cannot listen for gRPC on 127.0.0.1:{hub.grpc_port}" in hub.log


@pytest.mark.parametrize("window", [65535, 0], ids=["smallest-fixed-window", "probed-window"])
def test_requests_many_windows_long_arrive_whole(
    repository: Path, tmp_path: Path, window: int
) -> None:
    """A 2 MB request through a 64 KiB window needs some thirty window updates; four at once
    on one connection share its window too."""
    hub = HubProcess(
        repository=repository,
        workdir=tmp_path,
        config={
            "load_models": ["fp32"],
            "grpc_window_bytes": window,
            "limits": {"payload_max_bytes": 4_000_000},
        },
        grpc_port=free_port(),
    )
    hub.start()
    c = triton.InferenceServerClient(hub.grpc_url)
    rng = np.random.default_rng(7)
    tensors = [rng.random((1, 500_000), np.float32) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(
                    lambda x: c.infer("fp32", [_input("x", x, "FP32")], client_timeout=30).as_numpy(
                        "y"
                    ),
                    tensors,
                )
            )
        for x, y in zip(tensors, answers, strict=True):
            np.testing.assert_array_equal(y, x * 2)
    finally:
        c.close()
        hub.stop()
