"""The edge agent as a real process: ``edge-agent run`` on loopback, called over HTTP and through
EdgeClient, with fp32, fp16 and int8 digits models, compared with the interpreter run directly.

Runs without TensorFlow when the model cache exists (``scripts/make_test_models.py``), so the same
tests pass in a venv with only the edge extra. ``HYBRID_TEST_EXPECT_RUNTIME`` makes the tests
check which interpreter the agent picked.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edge_agent.client import EdgeClient
from edge_agent.errors import ResponseError
from protocols import HEADER_LENGTH_HEADER, encode_request
from tests.support.broker import free_port
from tests.support.models import (
    DIGITS_INPUT,
    DIGITS_KINDS,
    DIGITS_LABELS,
    DIGITS_OUTPUT,
    DigitsModels,
    ensure_digits_models,
    output_scale,
    require,
    run_model_directly,
)

pytestmark = pytest.mark.integration

EDGE_AGENT = Path(sys.executable).with_name("edge-agent")
EXPECT_RUNTIME_ENV = "HYBRID_TEST_EXPECT_RUNTIME"
PAYLOAD_LIMIT_BYTES = 1 << 20
START_TIMEOUT_S = float(os.environ.get("HYBRID_TEST_AGENT_START_TIMEOUT_S", "60"))
"""Emulated userlands (scripts/arm64/lane.sh) start the agent many times slower."""


@dataclass
class AgentProcess:
    """One ``edge-agent run`` process and where it listens."""

    workdir: Path
    api_address: str
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: Any = field(repr=False, default=None)

    @property
    def api_port(self) -> int:
        return int(self.api_address.rsplit(":", 1)[1])

    def client(self, **kwargs: Any) -> EdgeClient:
        return EdgeClient(self.api_address, **kwargs)

    def http(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
        return int(self.process.returncode)


def _agent_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_AGENT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_agent(
    workdir: Path, models: list[dict[str, Any]], *, api_address: str | None = None, **settings: Any
) -> AgentProcess:
    """Write a config, start the agent, and wait until every model is loaded (or failed)."""
    workdir.mkdir(parents=True, exist_ok=True)
    metrics_port = free_port()
    api_address = api_address or f"127.0.0.1:{free_port()}"
    config = {
        "device_id": "test-device",
        "device_class": "test-class",
        "data_dir": str(workdir / "data"),
        "api_address": api_address,
        "metrics_address": f"127.0.0.1:{metrics_port}",
        "limits": {"payload_max_bytes": PAYLOAD_LIMIT_BYTES},
        "models": models,
        **settings,
    }
    config_path = workdir / "agent.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "agent.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [str(EDGE_AGENT), "run", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_agent_env(),
    )
    agent = AgentProcess(
        workdir=workdir,
        api_address=api_address,
        metrics_port=metrics_port,
        process=process,
        log_path=log_path,
        _log=log,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    client = EdgeClient(api_address, timeout_s=2)
    while True:
        if process.poll() is not None:
            raise AssertionError(f"edge-agent exited with {process.returncode}:\n{agent.log()}")
        try:
            states = [m["state"] for m in client.status()["detail"]["models"].values()]
            if "loading" not in states:
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            agent.stop()
            raise AssertionError(f"edge-agent did not load its models in time:\n{agent.log()}")
        time.sleep(0.05)
    client.close()
    return agent


def digits_entries(digits: DigitsModels, **extra: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = [
        {"name": f"digits_{kind}", "path": str(digits.model(kind)), "threads": 1, **extra}
        for kind in DIGITS_KINDS
    ]
    entries[0]["labels"] = str(digits.labels)
    return entries


@pytest.fixture(scope="module")
def digits() -> DigitsModels:
    return require(ensure_digits_models)


@pytest.fixture(scope="module")
def agent(digits: DigitsModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    workdir = tmp_path_factory.mktemp("agent")
    corrupt = workdir / "corrupt.tflite"
    # A valid file identifier on garbage: some interpreter builds crash on it rather than raise.
    corrupt.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"garbage " * 64)
    models = [
        *digits_entries(digits, workers=2),
        {"name": "corrupt", "path": str(corrupt)},
        {"name": "missing", "path": str(workdir / "missing.tflite")},
    ]
    process = start_agent(workdir, models)
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def runtime(agent: AgentProcess) -> str:
    """The runtime the agent reports; the tests run that same interpreter directly."""
    with agent.client() as client:
        name = client.status()["runtime"]
    expected = os.environ.get(EXPECT_RUNTIME_ENV)
    if expected:
        assert name == expected
    return str(name)


@pytest.fixture
def client(agent: AgentProcess) -> Iterator[EdgeClient]:
    with agent.client() as edge_client:
        yield edge_client


def _post(
    conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    conn.request("POST", path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def _json_request(x: np.ndarray, **extra: Any) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": DIGITS_INPUT,
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ],
            **extra,
        }
    ).encode()


# -- status, health, metadata ---------------------------------------------------------------


def test_reports_the_runtime_in_status_and_metrics(agent: AgentProcess, runtime: str) -> None:
    assert runtime in ("ai_edge_litert", "tflite_runtime", "tensorflow")
    metrics = agent.metrics()
    assert f'edge_agent_runtime_info{{runtime="{runtime}"' in metrics
    assert "edge_agent_models_loaded 3.0" in metrics
    with agent.client() as client:
        status = client.status()
    assert status["device_id"] == "test-device"
    assert status["device_class"] == "test-class"
    assert sorted(status["models"]) == [f"digits_{kind}" for kind in sorted(DIGITS_KINDS)]


def test_health_and_server_metadata(client: EdgeClient) -> None:
    assert client.server_live()
    assert client.server_ready()
    metadata = client.server_metadata()
    assert metadata.name == "edge-agent"
    assert "binary_tensor_data" in metadata.extensions


@pytest.mark.parametrize("kind", DIGITS_KINDS)
def test_model_metadata_shows_float_tensors_for_every_kind(client: EdgeClient, kind: str) -> None:
    metadata = client.model_metadata(f"digits_{kind}")
    assert [(t.name, t.datatype.value, t.shape) for t in metadata.inputs] == [
        (DIGITS_INPUT, "FP32", [-1, 64])
    ]
    assert [(t.name, t.datatype.value, t.shape) for t in metadata.outputs] == [
        (DIGITS_OUTPUT, "FP32", [-1, 10])
    ]
    assert metadata.parameters is not None
    assert metadata.parameters["quantized"] is (kind == "int8")
    assert client.model_ready(f"digits_{kind}")
    assert client.model_ready(f"digits_{kind}", version="1")


# -- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DIGITS_KINDS)
def test_answers_match_the_interpreter_run_directly(
    client: EdgeClient, digits: DigitsModels, runtime: str, kind: str
) -> None:
    x, y = digits.data()
    result = client.infer(f"digits_{kind}", {DIGITS_INPUT: x}, request_id=f"all-{kind}")
    got = result.outputs[DIGITS_OUTPUT]
    want = run_model_directly(runtime, digits.model(kind), x)
    assert got.dtype == np.float32
    assert got.shape == (len(x), 10)
    if kind == "int8":
        step = output_scale(runtime, digits.model(kind))
        assert step > 0
        assert np.abs(got - want).max() <= step * 1.001
    else:
        np.testing.assert_array_equal(got, want)
    assert result.id == f"all-{kind}"
    assert result.served_by == "edge"
    assert result.model_name == f"digits_{kind}"
    assert result.model_version == "1"
    # The models really classify digits, whichever runtime built the cached reference.
    assert (got.argmax(axis=1) == y).mean() > 0.9
    np.testing.assert_allclose(
        got, digits.reference(kind), atol=max(1e-5, 2 * step if kind == "int8" else 0)
    )


def test_json_both_ways_and_binary_output_choices(
    agent: AgentProcess, client: EdgeClient, digits: DigitsModels
) -> None:
    x, _ = digits.data()
    batch = x[:5]
    expected = client.infer("digits_fp32", {DIGITS_INPUT: batch}).outputs[DIGITS_OUTPUT]
    conn = agent.http()
    # Plain JSON in and out, id echoed.
    status, answer = _post(conn, "/v2/models/digits_fp32/infer", _json_request(batch, id="j-1"))
    assert status == 200
    assert answer["id"] == "j-1"
    assert answer["parameters"] == {"served_by": "edge"}
    (output,) = answer["outputs"]
    assert output["datatype"] == "FP32"
    assert output["shape"] == [5, 10]
    np.testing.assert_array_equal(
        np.array(output["data"], dtype=np.float32).reshape(5, 10), expected
    )
    # binary_data_output asks for binary; a per-output binary_data=false wins over it.
    body = _json_request(
        batch,
        parameters={"binary_data_output": True},
        outputs=[{"name": DIGITS_OUTPUT, "parameters": {"binary_data": False}}],
    )
    status, answer = _post(conn, "/v2/models/digits_fp32/versions/1/infer", body)
    assert status == 200
    assert "data" in answer["outputs"][0]
    conn.request(
        "POST",
        "/v2/models/digits_fp32/infer",
        body=_json_request(batch, parameters={"binary_data_output": True}),
    )
    response = conn.getresponse()
    raw = response.read()
    header_length = int(response.getheader(HEADER_LENGTH_HEADER))
    header = json.loads(raw[:header_length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 5 * 10 * 4
    np.testing.assert_array_equal(
        np.frombuffer(raw[header_length:], dtype="<f4").reshape(5, 10), expected
    )
    conn.close()


def test_classification_uses_the_labels(
    client: EdgeClient, agent: AgentProcess, digits: DigitsModels
) -> None:
    x, _ = digits.data()
    batch = x[:4]
    scores = client.infer("digits_fp32", {DIGITS_INPUT: batch}).outputs[DIGITS_OUTPUT]
    conn = agent.http()
    status, answer = _post(
        conn,
        "/v2/models/digits_fp32/infer",
        _json_request(
            batch, outputs=[{"name": DIGITS_OUTPUT, "parameters": {"classification": 2}}]
        ),
    )
    conn.close()
    assert status == 200
    (output,) = answer["outputs"]
    assert output["datatype"] == "BYTES"
    assert output["shape"] == [4, 2]
    for row, pair in zip(scores, np.array(output["data"]).reshape(4, 2), strict=True):
        score, index, label = pair[0].split(":")
        assert int(index) == int(row.argmax())
        assert label == DIGITS_LABELS[int(index)]
        assert abs(float(score) - float(row.max())) < 1e-5


def test_dynamic_batch_sizes(client: EdgeClient, digits: DigitsModels, runtime: str) -> None:
    x, _ = digits.data()
    for kind in ("fp32", "int8"):
        for size in (1, 7, 64, 3, 1, 128):
            got = client.infer(f"digits_{kind}", {DIGITS_INPUT: x[:size]}).outputs[DIGITS_OUTPUT]
            want = run_model_directly(runtime, digits.model(kind), x[:size])
            assert got.shape == (size, 10)
            if kind == "fp32":
                np.testing.assert_array_equal(got, want)
            else:
                assert np.abs(got - want).max() <= output_scale(runtime, digits.model(kind)) * 1.001


def test_concurrent_requests_each_get_their_own_answer(
    client: EdgeClient, digits: DigitsModels, runtime: str
) -> None:
    x, _ = digits.data()
    jobs = [(i % 3, (i * 7) % 300, 1 + i % 8) for i in range(16 * 8)]
    expected = {
        (kind, start, size): run_model_directly(
            runtime, digits.model(DIGITS_KINDS[kind]), x[start : start + size]
        )
        for kind, start, size in set(jobs)
    }

    def call(job: tuple[int, int, int]) -> tuple[tuple[int, int, int], np.ndarray]:
        kind, start, size = job
        result = client.infer(
            f"digits_{DIGITS_KINDS[kind]}", {DIGITS_INPUT: x[start : start + size]}
        )
        return job, result.outputs[DIGITS_OUTPUT]

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(call, jobs))
    assert len(answers) == len(jobs)
    for job, got in answers:
        step = output_scale(runtime, digits.model("int8")) * 1.001 if job[0] == 2 else 0.0
        assert np.abs(got - expected[job]).max() <= step, job


def test_tritonclient_http_works_unchanged(agent: AgentProcess, digits: DigitsModels) -> None:
    """Where tritonclient is installed (not in the light edge venv), it talks to the agent as is."""
    triton = pytest.importorskip("tritonclient.http")
    x, _ = digits.data()
    client = triton.InferenceServerClient(agent.api_address)
    assert client.is_server_ready()
    assert client.is_model_ready("digits_int8")
    with EdgeClient(agent.api_address) as edge:
        expected = edge.infer("digits_int8", {DIGITS_INPUT: x[:3]}).outputs[DIGITS_OUTPUT]
    for binary in (True, False):
        tensor = triton.InferInput(DIGITS_INPUT, [3, 64], "FP32")
        tensor.set_data_from_numpy(x[:3], binary_data=binary)
        wanted = triton.InferRequestedOutput(DIGITS_OUTPUT, binary_data=binary)
        result = client.infer("digits_int8", [tensor], outputs=[wanted], request_id="tc")
        np.testing.assert_array_equal(result.as_numpy(DIGITS_OUTPUT), expected)
        assert result.get_response()["parameters"] == {"served_by": "edge"}
        assert result.get_response()["id"] == "tc"
    top = triton.InferRequestedOutput(DIGITS_OUTPUT, class_count=1)
    labels = client.infer("digits_fp32", [tensor], outputs=[top]).as_numpy(DIGITS_OUTPUT)
    assert labels.shape == (3, 1)
    assert labels[0, 0].decode().split(":")[2] in DIGITS_LABELS
    client.close()


# -- bad input -------------------------------------------------------------------------------


def _binary_body(x: np.ndarray, declared_bytes: int) -> tuple[bytes, int]:
    body = encode_request({DIGITS_INPUT: x}, binary=True)
    header = json.loads(body.header)
    header["inputs"][0]["parameters"]["binary_data_size"] = declared_bytes
    raw_header = json.dumps(header).encode()
    return raw_header + x.tobytes(), len(raw_header)


BAD_REQUESTS = {
    "wrong shape": (
        "digits_fp32",
        lambda x: (_json_request(x[:2, :63]), {}),
        400,
        "shape [2, 63]",
    ),
    "wrong datatype": (
        "digits_int8",
        lambda x: (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": DIGITS_INPUT,
                            "datatype": "FP64",
                            "shape": [1, 64],
                            "data": x[0].tolist(),
                        }
                    ]
                }
            ).encode(),
            {},
        ),
        400,
        "FP64",
    ),
    "unknown input": (
        "digits_fp16",
        lambda x: (_json_request(x[:1]).replace(b'"pixels"', b'"image"'), {}),
        400,
        "no input 'image'",
    ),
    "unknown output": (
        "digits_fp16",
        lambda x: (_json_request(x[:1], outputs=[{"name": "logits"}]), {}),
        400,
        "no output 'logits'",
    ),
    "unknown model": ("nope", lambda x: (_json_request(x[:1]), {}), 404, "unknown model 'nope'"),
    "unknown version": (
        "digits_fp32/versions/7",
        lambda x: (_json_request(x[:1]), {}),
        404,
        "version '7'",
    ),
    "malformed body": ("digits_fp32", lambda x: (b'{"inputs": [', {}), 400, "malformed JSON"),
    "not a tensor list": ("digits_fp32", lambda x: (b'{"inputs": 3}', {}), 400, "inputs"),
    "truncated binary body": (
        "digits_fp32",
        lambda x: (lambda body: (body[0], {HEADER_LENGTH_HEADER: str(body[1])}))(
            _binary_body(x[:2], 2 * 64 * 4 * 2)
        ),
        400,
        "binary_data_size is 1024 but only 512 bytes",
    ),
    "header length past the end": (
        "digits_fp32",
        lambda x: (_json_request(x[:1]), {HEADER_LENGTH_HEADER: "999999"}),
        400,
        HEADER_LENGTH_HEADER,
    ),
    "broken model": ("corrupt", lambda x: (_json_request(x[:1]), {}), 503, "failed to load"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_error_and_the_agent_keeps_serving(
    agent: AgentProcess, digits: DigitsModels, case: str
) -> None:
    model, make, status, fragment = BAD_REQUESTS[case]
    x, _ = digits.data()
    body, headers = make(x)
    conn = agent.http()
    got_status, answer = _post(conn, f"/v2/models/{model}/infer", body, headers)
    assert got_status == status, answer
    assert fragment in answer["error"]
    # The same kept-alive connection still serves.
    ok_status, ok = _post(conn, "/v2/models/digits_fp32/infer", _json_request(x[:1]))
    assert ok_status == 200, ok
    conn.close()
    assert agent.process.poll() is None


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def _raw_exchange(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    if half_close:
        sock.shutdown(socket.SHUT_WR)
    return _read_until_closed(sock)


def test_oversized_body_is_refused_by_content_length_before_it_is_sent(
    agent: AgentProcess, client: EdgeClient, digits: DigitsModels
) -> None:
    request = (
        b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {PAYLOAD_LIMIT_BYTES + 1}\r\n\r\n".encode()
    )
    # No body is sent at all: the answer must come from the headers alone, then the close.
    answer = _raw_exchange(agent.api_port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in head
    assert f"the limit is {PAYLOAD_LIMIT_BYTES}" in json.loads(body)["error"]
    x, _ = digits.data()
    with pytest.raises(ResponseError) as excinfo:
        client.infer("digits_fp32", {DIGITS_INPUT: np.zeros((4200, 64), np.float32) + x[0]})
    assert excinfo.value.status == 413
    assert client.infer("digits_fp32", {DIGITS_INPUT: x[:1]}).served_by == "edge"


def test_body_shorter_than_its_content_length(agent: AgentProcess) -> None:
    request = (
        b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
        b'{"inputs": []}'
    )
    answer = _raw_exchange(agent.api_port, request, half_close=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert "ended after 14 of the 500 bytes" in json.loads(body)["error"]
    assert agent.process.poll() is None


def test_missing_content_length_and_wrong_method(agent: AgentProcess) -> None:
    answer = _raw_exchange(
        agent.api_port,
        b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 411 ")
    conn = agent.http()
    conn.request("GET", "/v2/models/digits_fp32/infer")
    response = conn.getresponse()
    assert response.status == 405
    assert response.getheader("Allow") == "POST"
    assert "use POST" in json.loads(response.read())["error"]
    conn.close()


def test_client_raises_response_error_with_the_status(client: EdgeClient) -> None:
    with pytest.raises(ResponseError) as excinfo:
        client.infer("nope", {DIGITS_INPUT: np.zeros((1, 64), np.float32)})
    assert excinfo.value.status == 404
    assert "unknown model 'nope'" in str(excinfo.value)
    with pytest.raises(ResponseError) as excinfo:
        client.infer("digits_fp32", {DIGITS_INPUT: np.zeros((1, 64), np.float64)})
    assert excinfo.value.status == 400
    assert "FP64" in excinfo.value.message


# -- failed models and metrics ------------------------------------------------------------


def test_failed_models_are_reported_and_the_others_serve(
    agent: AgentProcess, client: EdgeClient
) -> None:
    assert client.model_ready("digits_fp32")
    assert not client.model_ready("corrupt")
    assert not client.model_ready("missing")
    conn = agent.http()
    conn.request("GET", "/v2/models/missing/ready")
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 503
    assert answer["ready"] is False
    assert "does not exist" in answer["error"]
    conn.request("GET", "/v2/models/corrupt")
    response = conn.getresponse()
    assert response.status == 503
    assert "corrupt.tflite" in json.loads(response.read())["error"]
    conn.close()
    models = client.status()["detail"]["models"]
    assert models["corrupt"]["state"] == "failed"
    assert "corrupt.tflite" in models["corrupt"]["error"]
    assert models["missing"]["state"] == "failed"
    assert models["digits_int8"]["state"] == "ready"
    metrics = agent.metrics()
    assert 'edge_agent_model_ready{model="corrupt"} 0.0' in metrics
    assert 'edge_agent_model_ready{model="digits_fp16"} 1.0' in metrics
    assert "model corrupt failed to load" in agent.log()


def _sample(metrics: str, name: str, labels: str) -> float:
    prefix = f"{name}{{{labels}}} "
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def test_metrics_count_requests_errors_and_latency(
    agent: AgentProcess, client: EdgeClient, digits: DigitsModels
) -> None:
    x, _ = digits.data()
    labels = 'model="digits_fp16",served_by="edge"'
    before = agent.metrics()
    for _ in range(3):
        client.infer("digits_fp16", {DIGITS_INPUT: x[:2]})
    with pytest.raises(ResponseError):
        client.infer("digits_fp16", {DIGITS_INPUT: x[:2, :10]})
    with pytest.raises(ResponseError):
        client.infer("no-such-model", {DIGITS_INPUT: x[:2]})
    after = agent.metrics()
    assert (
        _sample(after, "edge_agent_requests_total", labels)
        - _sample(before, "edge_agent_requests_total", labels)
        == 3
    )
    assert (
        _sample(after, "edge_agent_inference_seconds_count", labels)
        - _sample(before, "edge_agent_inference_seconds_count", labels)
        == 3
    )
    error = 'error="bad_input",model="digits_fp16"'
    assert (
        _sample(after, "edge_agent_request_errors_total", error)
        - _sample(before, "edge_agent_request_errors_total", error)
        == 1
    )
    unknown = 'error="not_found",model="_unknown"'
    assert _sample(after, "edge_agent_request_errors_total", unknown) >= 1
    assert 'model="no-such-model"' not in after
    assert _sample(after, "edge_agent_http_request_seconds_count", 'model="digits_fp16"') >= 3


# -- lifecycle -------------------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_then_exits_0(
    digits: DigitsModels, tmp_path: Path
) -> None:
    agent = start_agent(tmp_path, digits_entries(digits), drain_timeout_s=20)
    try:
        x, _ = digits.data()
        body = _json_request(x[:3], id="in-flight")
        expected = run_model_directly(_runtime_of(agent), digits.model("fp32"), x[:3])
        # A request whose body is still arriving is in flight when SIGTERM comes.
        slow = socket.create_connection(("127.0.0.1", agent.api_port), timeout=20)
        slow.sendall(
            b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        with agent.client() as client:
            deadline = time.monotonic() + 10
            while client.status()["detail"]["in_flight"] != 1:
                assert time.monotonic() < deadline, "the agent never counted the request in"
                time.sleep(0.01)
            agent.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while client.server_ready():
                assert time.monotonic() < deadline, "the agent never stopped being ready"
                time.sleep(0.02)
            with pytest.raises(ResponseError) as excinfo:
                client.infer("digits_fp32", {DIGITS_INPUT: x[:1]})
            assert excinfo.value.status == 503
            assert "draining" in excinfo.value.message
        assert agent.process.poll() is None, "exited before the in-flight request finished"
        slow.sendall(body[10:])
        answer = _read_until_closed(slow)  # the agent exits once the answer is out
        head, _, raw = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        result = json.loads(raw)
        assert result["id"] == "in-flight"
        got = np.array(result["outputs"][0]["data"], dtype=np.float32).reshape(3, 10)
        np.testing.assert_array_equal(got, expected)
        assert agent.process.wait(timeout=20) == 0
        assert "drained" in agent.log()
    finally:
        agent.stop()


def _runtime_of(agent: AgentProcess) -> str:
    with agent.client() as client:
        return str(client.status()["runtime"])


def test_unix_socket_api(digits: DigitsModels, tmp_path: Path) -> None:
    socket_path = tmp_path / "run" / "api.sock"
    agent = start_agent(tmp_path, digits_entries(digits)[:1], api_address=f"unix:{socket_path}")
    try:
        x, _ = digits.data()
        with EdgeClient(f"unix:{socket_path}") as client:
            assert client.server_ready()
            result = client.infer("digits_fp32", {DIGITS_INPUT: x[:4]})
            assert result.outputs[DIGITS_OUTPUT].shape == (4, 10)
            assert result.served_by == "edge"
        assert oct(socket_path.stat().st_mode & 0o777) == oct(0o660)
    finally:
        assert agent.stop() == 0, agent.log()
    assert not socket_path.exists()
