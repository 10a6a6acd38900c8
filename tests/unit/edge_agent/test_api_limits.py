"""What an app controls is checked where the request enters the local API: request ids (length,
characters, and how they come back in headers), shapes, and the request target. Each bad value
gets a 4xx with ``{"error": ...}``; the agent keeps serving."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from edge_agent.addresses import TcpAddress
from edge_agent.agent import Agent
from protocols import REQUEST_ID_MAX_BYTES
from tests.support.broker import free_port
from tests.support.models import DIGITS_INPUT


def _port(agent: Agent) -> int:
    address = agent.api_address
    assert isinstance(address, TcpAddress)
    return address.port


def _body(request_id: str | None = None, shape: list[int] | None = None) -> bytes:
    tensor: dict[str, Any] = {
        "name": DIGITS_INPUT,
        "datatype": "FP32",
        "shape": [1, 64] if shape is None else shape,
        "data": [0.5] * 64 if shape is None else [],
    }
    body: dict[str, Any] = {"inputs": [tensor]}
    if request_id is not None:
        body["id"] = request_id
    return json.dumps(body).encode()


def _exchange(agent: Agent, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", _port(agent)), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _post_raw(agent: Agent, model: str, body: bytes) -> bytes:
    return _exchange(
        agent,
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body,
    )


def _split(answer: bytes) -> tuple[int, list[bytes], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return int(lines[0].split()[1]), lines[1:], json.loads(body)


def _post(agent: Agent, model: str, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", _port(agent), timeout=10)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture
def queuing_agent(make_agent: Callable[..., Agent]) -> Agent:
    """``remote`` queues for the cloud; nothing listens on the broker port, so every request
    waits in the outbox and gets a 202 with its ``Location``."""
    return make_agent(
        cloud={
            "broker": f"127.0.0.1:{free_port()}",
            "remote_models": [
                {"name": "remote", "cloud_model": "m", "on_cloud_unavailable": "queue"}
            ],
        }
    )


@pytest.mark.parametrize(
    "request_id",
    [
        "x" * 65_536,  # does not fit MQTT Correlation Data
        "x" * (REQUEST_ID_MAX_BYTES + 1),
        "é" * (REQUEST_ID_MAX_BYTES // 2 + 1),  # short in characters, long in UTF-8
        "a\r\nSet-Cookie: stolen=1",
        "tab\there",
        "nul\x00",
        "c1\x85",
    ],
)
def test_a_request_id_past_the_limits_is_refused_at_entry(
    queuing_agent: Agent, request_id: str
) -> None:
    status, answer = _post(queuing_agent, "remote", _body(request_id))
    assert status == 400, answer
    assert answer["error"].startswith("id: request id ")
    assert queuing_agent.cloud is not None
    assert queuing_agent.cloud.outbox is not None
    assert queuing_agent.cloud.outbox.depth().requests == 0  # nothing stored to fail later
    labels = {"model": "remote", "error": "bad_request"}
    assert queuing_agent.metrics.registry.get_sample_value(
        "edge_agent_request_errors_total", labels
    )
    status, answer = _post(queuing_agent, "remote", _body("fine-after"))
    assert status == 202, answer


@pytest.mark.parametrize(
    "request_id",
    ["plain-id", "with space/and?query#frag", "ünïcødé-日本", "%41", "x" * REQUEST_ID_MAX_BYTES],
)
def test_the_location_of_a_queued_request_is_percent_encoded(
    queuing_agent: Agent, request_id: str
) -> None:
    status, headers, answer = _split(_post_raw(queuing_agent, "remote", _body(request_id)))
    assert status == 202, answer
    assert answer["id"] == request_id
    (location,) = [line for line in headers if line.lower().startswith(b"location:")]
    expected = "/v2/requests/" + quote(request_id, safe="")
    assert location == b"Location: " + expected.encode("ascii")
    assert answer["location"] == expected
    assert not any(line.lower().startswith(b"set-cookie") for line in headers)
    # The location fetches the request back.
    conn = http.client.HTTPConnection("127.0.0.1", _port(queuing_agent), timeout=10)
    conn.request("GET", expected)
    response = conn.getresponse()
    fetched = json.loads(response.read())
    conn.close()
    assert response.status == 202, fetched
    assert fetched["id"] == request_id


def test_a_bad_id_in_a_requests_path_is_a_400(queuing_agent: Agent) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", _port(queuing_agent), timeout=10)
    conn.request("GET", "/v2/requests/" + "%0D%0A" + "x")
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 400
    assert "control character" in body["error"]


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ([0, 100000000000000000000], "dimension 1 is 100000000000000000000; the limit is"),
        ([9223372036854775808, 0], "dimension 0 is 9223372036854775808; the limit is"),
        ([0, 4294967296, 4294967296], "dimension 1 is 4294967296; the limit is"),
    ],
)
def test_a_tensor_with_an_impossible_shape_is_a_400(
    make_agent: Callable[..., Agent], shape: list[int], fragment: str
) -> None:
    agent = make_agent()
    status, answer = _post(agent, "digits_fp32", _body(shape=shape))
    assert status == 400, answer
    assert fragment in answer["error"]
    assert _post(agent, "digits_fp32", _body())[0] == 200


def test_a_binary_tensor_with_an_impossible_shape_is_a_400(
    make_agent: Callable[..., Agent],
) -> None:
    agent = make_agent()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": DIGITS_INPUT,
                    "datatype": "FP32",
                    "shape": [0, 4294967296, 4294967296],
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    answer = _exchange(
        agent,
        b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Inference-Header-Content-Length: {len(header)}\r\n".encode()
        + f"Content-Length: {len(header)}\r\n\r\n".encode()
        + header,
    )
    status, _, body = _split(answer)
    assert status == 400, body
    assert "dimension 1 is 4294967296" in body["error"]


@pytest.mark.parametrize("target", ["http://[::1", "http://[zz]/v2", "http://x]/v2/health/live"])
def test_a_request_target_that_is_not_a_url_is_a_400(
    make_agent: Callable[..., Agent], target: str
) -> None:
    agent = make_agent()
    answer = _exchange(
        agent, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    status, _, body = _split(answer)
    assert status == 400, body
    assert body["error"].startswith("the request target is not a valid URL")
    assert _post(agent, "digits_fp32", _body())[0] == 200
