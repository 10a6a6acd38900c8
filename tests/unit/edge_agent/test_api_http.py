"""The local API's HTTP layer against hostile and slow clients: JSON for every status, 405 on a
known route, one message length, deadlines for headers and bodies, slow clients that cannot keep
others out, and clients that go away logged quietly."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from edge_agent.addresses import TcpAddress
from edge_agent.agent import Agent
from tests.support.models import DIGITS_INPUT

BODY = json.dumps(
    {"inputs": [{"name": DIGITS_INPUT, "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
).encode()


def _port(agent: Agent) -> int:
    address = agent.api_address
    assert isinstance(address, TcpAddress)
    return address.port


def _exchange(agent: Agent, raw: bytes, timeout_s: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", _port(agent)), timeout=timeout_s) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _parse(answer: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def _good(agent: Agent) -> tuple[int, dict[str, Any]]:
    answer = _exchange(
        agent,
        b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY,
    )
    status, _, body = _parse(answer)
    return status, body


@pytest.fixture
def agent(make_agent: Callable[..., Agent]) -> Agent:
    return make_agent()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v2/health/live HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /v2/health/live HTTP/x.y\r\nHost: x\r\n\r\n", 400),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (
            b"GET /v2/health/live HTTP/1.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(120))
            + b"\r\n",
            431,
        ),
    ],
)
def test_errors_of_the_http_layer_are_json(agent: Agent, raw: bytes, status: int) -> None:
    got, headers, body = _parse(_exchange(agent, raw))
    assert got == status
    assert headers["content-type"] == "application/json"
    assert isinstance(body["error"], str)
    assert body["error"]
    assert _good(agent)[0] == 200


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "TRACE", "BREW", "PROPFIND"])
def test_any_other_method_on_a_known_route_is_a_405(agent: Agent, method: str) -> None:
    got, headers, body = _parse(
        _exchange(
            agent,
            f"{method} /v2/models/digits_fp32 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
        )
    )
    assert got == 405
    assert headers["allow"] == "GET"
    assert f"{method} is not allowed" in body["error"]


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 10\r\nContent-Length: 20\r\n",
        f"Content-Length: {len(BODY)}\r\nContent-Length: {len(BODY)}\r\n".encode(),
        f"Content-Length: {len(BODY)}\r\nTransfer-Encoding: chunked\r\n".encode(),
        b"Content-Length: +12\r\n",
        b"Content-Length: \xb2\r\n",
    ],
)
def test_conflicting_or_repeated_lengths_are_a_400(agent: Agent, framing: bytes) -> None:
    answer = _exchange(
        agent,
        b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + BODY,
    )
    got, headers, body = _parse(answer)
    assert got == 400, body
    assert headers["connection"] == "close"
    assert "Content-Length" in body["error"]
    assert answer.count(b"HTTP/1.1 ") == 1  # the body was never read as a second request


def test_headers_must_arrive_within_their_deadline(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(header_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", _port(agent)), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        for _ in range(10):  # a byte now and then: never idle, never done
            time.sleep(0.1)
            try:
                sock.sendall(b"X")
            except OSError:
                break
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        took = time.monotonic() - start
    got, _, body = _parse(answer)
    assert got == 408
    assert "did not arrive" in body["error"]
    assert took < 3


def test_a_body_must_arrive_within_its_deadline(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(header_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", _port(agent)), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
            + BODY[:10]
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    got, _, body = _parse(answer)
    assert got == 408
    assert "request body" in body["error"]


def test_128_slow_clients_do_not_keep_a_good_request_waiting(agent: Agent) -> None:
    """Each slow client has sent part of a request line and goes quiet (as one sending a byte
    every 20 s would); the agent's connection limit is the default 128."""
    slow = []
    try:
        for _ in range(128):
            sock = socket.create_connection(("127.0.0.1", _port(agent)), timeout=10)
            sock.sendall(b"P")
            slow.append(sock)
        time.sleep(0.2)
        for _ in range(5):
            start = time.monotonic()
            status, body = _good(agent)
            took = time.monotonic() - start
            assert status == 200, body
            assert took < 1.0, took
    finally:
        for sock in slow:
            sock.close()


def test_a_client_that_goes_away_is_not_an_error(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", _port(agent)), timeout=5)
        sock.sendall(
            b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
            + BODY[:20]
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset mid-body
    time.sleep(0.3)
    assert _good(agent)[0] == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert not any(r.exc_info for r in caplog.records)


def test_empty_lines_before_a_request_are_ignored(agent: Agent) -> None:
    got, _, body = _parse(
        _exchange(
            agent, b"\r\n\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    )
    assert (got, body) == (200, {"live": True})


def test_a_garbled_request_line_after_an_empty_one_is_a_400(agent: Agent) -> None:
    got, _, body = _parse(_exchange(agent, b'\n\x12"\xc8\x8f\xb8\xda&\xe3oYOST /\r\n\r\n'))
    assert got == 400
    assert body["error"]


def test_connections_draining_a_refused_body_make_room(make_agent: Callable[..., Agent]) -> None:
    """After a 413 the agent reads what the client still sends for a moment (so the answer is
    not lost to a reset); such connections give way to a new one instead of causing 503s."""
    agent = make_agent(max_connections=2)
    held = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", _port(agent)), timeout=10)
            sock.sendall(
                b"POST /v2/models/digits_fp32/infer HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 1099511627776\r\n\r\n" + b"x" * 1000
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 413")
            held.append(sock)
        status, body = _good(agent)
        assert status == 200, body
    finally:
        for sock in held:
            sock.close()
