"""The local API through its real HTTP server, in process (no mocked HTTP)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edge_agent.addresses import TcpAddress
from edge_agent.agent import Agent
from protocols import DeviceStatus
from tests.support.models import DIGITS_INPUT


def _port(agent: Agent) -> int:
    address = agent.api_address
    assert isinstance(address, TcpAddress)
    return address.port


def _get(agent: Agent, path: str) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", _port(agent), timeout=5)
    conn.request("GET", path)
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return response.status, body, response


def _infer_body(rows: int = 1) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": DIGITS_INPUT,
                    "datatype": "FP32",
                    "shape": [rows, 64],
                    "data": [0.5] * 64 * rows,
                }
            ]
        }
    ).encode()


def _exchange(agent: Agent, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", _port(agent)), timeout=5) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def agent(make_agent: Callable[..., Agent]) -> Agent:
    return make_agent(limits={"payload_max_bytes": 100_000}, idle_timeout_s=5)


@pytest.mark.parametrize(
    ("path", "status", "key", "value"),
    [
        ("/v2/health/live", 200, "live", True),
        ("/v2/health/ready", 200, "ready", True),
        ("/v2/health/live/", 200, "live", True),
        ("/v2", 200, "name", "edge-agent"),
        ("/v2/models/digits_fp32/ready", 200, "ready", True),
        ("/v2/models/digits_fp32/versions/1/ready", 200, "ready", True),
        ("/v2/models/digits%5Ffp32", 200, "name", "digits_fp32"),
        ("/v2/models/digits_fp32?verbose=1", 200, "platform", "tensorflow_lite"),
    ],
)
def test_get_endpoints(agent: Agent, path: str, status: int, key: str, value: object) -> None:
    got_status, body, _ = _get(agent, path)
    assert got_status == status
    assert body[key] == value


@pytest.mark.parametrize(
    ("method", "path", "status", "fragment"),
    [
        ("GET", "/v3/health", 404, "no such endpoint: GET /v3/health"),
        ("GET", "/v2/models/nope", 404, "unknown model 'nope'"),
        ("GET", "/v2/models/nope/ready", 404, "unknown model 'nope'"),
        ("GET", "/v2/models/digits_fp32/versions/9", 404, "no version '9'"),
        ("POST", "/v2/health/ready", 405, "use GET"),
        ("DELETE", "/v2/models/digits_fp32", 405, "use GET"),
        ("PUT", "/v2/models/digits_fp32/infer", 405, "use POST"),
    ],
)
def test_errors_are_json_with_a_fitting_status(
    agent: Agent, method: str, path: str, status: int, fragment: str
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", _port(agent), timeout=5)
    conn.request(method, path, body=b"{}" if method != "GET" else None)
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == status
    assert response.getheader("Content-Type") == "application/json"
    assert fragment in body["error"]
    conn.close()


def test_status_is_a_device_status(agent: Agent) -> None:
    status, body, _ = _get(agent, "/status")
    assert status == 200
    message = DeviceStatus.model_validate(body)
    assert message.device_id == "unit-device"
    assert agent.runtime is not None
    assert message.runtime == agent.runtime.name
    assert sorted(message.models) == ["digits_fp16", "digits_fp32", "digits_int8"]
    assert body["detail"]["models"]["digits_int8"]["state"] == "ready"


def test_keep_alive_serves_several_requests_on_one_connection(agent: Agent) -> None:
    one = (
        b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {len(_infer_body())}\r\n\r\n".encode()
        + _infer_body()
    )
    last = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = _exchange(agent, one + one + last)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.count(b'"served_by":"edge"') == 2


def test_http_1_0_closes_after_the_answer(agent: Agent) -> None:
    answer = _exchange(agent, b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in answer


def test_expect_100_continue(agent: Agent) -> None:
    body = _infer_body()
    with socket.create_connection(("127.0.0.1", _port(agent)), timeout=5) as sock:
        sock.sendall(
            b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        assert sock.recv(100).startswith(b"HTTP/1.1 200 OK")
    answer = _exchange(
        agent,
        b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 100001\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"request body is 100001 bytes; the limit is 100000" in answer


@pytest.mark.parametrize(
    ("headers", "status", "fragment"),
    [
        (b"Transfer-Encoding: chunked\r\n", b"411", b"chunked"),
        (b"Content-Length: abc\r\n", b"400", b"Content-Length must be an integer"),
    ],
)
def test_bodies_without_a_usable_length(
    agent: Agent, headers: bytes, status: bytes, fragment: bytes
) -> None:
    answer = _exchange(
        agent, b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert fragment in answer
    assert b"Connection: close" in answer


def test_draining_refuses_new_requests_but_stays_live(agent: Agent) -> None:
    assert agent.gate.drain(timeout_s=1)
    assert _get(agent, "/v2/health/live")[0] == 200
    status, body, _ = _get(agent, "/v2/health/ready")
    assert status == 503
    assert "draining" in body["error"]
    conn = http.client.HTTPConnection("127.0.0.1", _port(agent), timeout=5)
    conn.request("POST", "/v2/models/digits_fp32/infer", body=_infer_body())
    response = conn.getresponse()
    assert response.status == 503
    assert response.getheader("Connection") == "close"
    assert "draining" in json.loads(response.read())["error"]
    conn.close()


def test_not_ready_while_no_model_loaded(make_agent: Callable[..., Agent], tmp_path: Any) -> None:
    agent = make_agent(models=[{"name": "gone", "path": str(tmp_path / "gone.tflite")}])
    status, body, _ = _get(agent, "/v2/health/ready")
    assert status == 503
    assert "no model loaded" in body["error"]
    status, body, _ = _get(agent, "/v2/models/gone/ready")
    assert (status, body["ready"]) == (503, False)
    assert "does not exist" in body["error"]


def test_json_numbers_round_trip_exactly(agent: Agent) -> None:
    x = np.random.default_rng(1).random((3, 64), dtype=np.float32)
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": DIGITS_INPUT,
                    "datatype": "FP32",
                    "shape": [3, 64],
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()
    conn = http.client.HTTPConnection("127.0.0.1", _port(agent), timeout=5)
    conn.request("POST", "/v2/models/digits_fp32/infer", body=body)
    answer = json.loads(conn.getresponse().read())
    conn.close()
    got = np.array(answer["outputs"][0]["data"], np.float32).reshape(3, 10)
    want = agent.router.infer("digits_fp32", {DIGITS_INPUT: x}).outputs["output_0"]
    np.testing.assert_array_equal(got, want)


def test_past_the_limit_the_longest_waiting_connection_makes_room(
    make_agent: Callable[..., Agent],
) -> None:
    agent = make_agent(max_connections=2)
    held = [socket.create_connection(("127.0.0.1", _port(agent)), timeout=5) for _ in range(2)]
    try:
        for sock in held:  # both served, and kept open (idle)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1000).startswith(b"HTTP/1.1 200 OK")
            time.sleep(0.01)
        # A third connection is served: the oldest idle one is closed for it.
        answer = _exchange(agent, b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert held[0].recv(1000) == b""
        held[1].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert held[1].recv(1000).startswith(b"HTTP/1.1 200 OK")
    finally:
        for sock in held:
            sock.close()
