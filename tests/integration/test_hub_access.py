"""Access control, limits and lifecycle of a real hub process."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support import onnx_models
from tests.support.hub import HubProcess, add_model

pytestmark = pytest.mark.integration

INFER_KEY = "infer-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
SLOW_KEY = "slow-key-0123456789abcdefgh"
JWT_SECRET = "jwt-secret-for-tests-0123456789abcdef"

BODY = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]},
        ]
    }
).encode()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    add_model(repo, "add_sub", {"backend": "onnxruntime", "max_batch_size": 8}, onnx_models.add_sub)
    add_model(
        repo,
        "slow_batch",
        {
            "backend": "onnxruntime",
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_us": 1_500_000},
        },
        onnx_models.add_sub,
    )
    return repo


@pytest.fixture(scope="module")
def secured_hub(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    hub = HubProcess(
        repository=repository,
        workdir=tmp_path_factory.mktemp("secured"),
        config={
            "host": "0.0.0.0",
            "auth": {
                "api_keys": [
                    {"name": "app", "key": INFER_KEY, "scopes": ["infer"]},
                    {"name": "ops", "key": ADMIN_KEY, "scopes": ["infer", "admin"]},
                    {
                        "name": "slow",
                        "key": SLOW_KEY,
                        "scopes": ["infer"],
                        "rate_limit_per_s": 1,
                        "burst": 2,
                    },
                ],
                "jwt": {"secret": JWT_SECRET, "audience": "hub", "issuer": "idp"},
            },
        },
    )
    hub.start()
    yield hub
    hub.stop()


def call(
    hub: HubProcess,
    path: str,
    *,
    method: str = "POST",
    body: bytes = BODY,
    token: str | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, Any], dict[str, str]]:
    conn = http.client.HTTPConnection(host, hub.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body=body if method == "POST" else None, headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        return reply.status, json.loads(data) if data else {}, dict(reply.getheaders())
    finally:
        conn.close()


def token(
    scope: str,
    *,
    expires_in_s: float = 60,
    audience: str = "hub",
    issuer: str = "idp",
    secret: str = JWT_SECRET,
) -> str:
    claims = {
        "sub": "svc",
        "scope": scope,
        "aud": audience,
        "iss": issuer,
        "exp": int(time.time() + expires_in_s),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def test_health_is_open(secured_hub: HubProcess) -> None:
    assert call(secured_hub, "/v2/health/live", method="GET")[0] == 200
    assert call(secured_hub, "/v2/health/ready", method="GET")[0] == 200


@pytest.mark.parametrize(
    ("auth", "status", "fragment"),
    [
        (None, 401, "missing credentials"),
        ("wrong-key-0123456789abcdef", 401, "invalid"),
        ("expired", 401, "invalid token: Signature has expired"),
        ("bad-audience", 401, "invalid token"),
        ("bad-issuer", 401, "invalid token: Invalid issuer"),
        ("bad-signature", 401, "invalid token: Signature verification failed"),
    ],
)
def test_missing_or_wrong_credentials(
    secured_hub: HubProcess, auth: str | None, status: int, fragment: str
) -> None:
    tokens = {
        "expired": token("infer", expires_in_s=-10),
        "bad-audience": token("infer", audience="other"),
        "bad-issuer": token("infer", issuer="someone-else"),
        "bad-signature": token("infer", secret="another-secret-0123456789abcdefgh"),
    }
    got, reply, headers = call(
        secured_hub, "/v2/models/add_sub/infer", token=tokens.get(auth or "", auth)
    )
    assert got == status
    assert fragment in reply["error"]
    assert (
        headers.get("www-authenticate") == "Bearer" or headers.get("WWW-Authenticate") == "Bearer"
    )
    assert call(secured_hub, "/v2/models/add_sub/infer", token=INFER_KEY)[0] == 200


def test_api_key_and_jwt_with_scopes(secured_hub: HubProcess) -> None:
    assert call(secured_hub, "/v2/models/add_sub/infer", token=INFER_KEY)[0] == 200
    assert call(secured_hub, "/v2/models/add_sub/infer", token=token("infer"))[0] == 200
    status, reply, _ = call(secured_hub, "/v2/repository/index", token=INFER_KEY)
    assert status == 403
    assert "lacks the 'admin' scope" in reply["error"]
    assert call(secured_hub, "/v2/repository/index", token=token("infer"))[0] == 403
    assert call(secured_hub, "/v2/repository/index", token=ADMIN_KEY)[0] == 200
    assert call(secured_hub, "/v2/repository/index", token=token("infer admin"))[0] == 200


def test_tritonclient_sends_credentials_as_headers(secured_hub: HubProcess) -> None:
    client = triton.InferenceServerClient(secured_hub.url)
    a = np.ones((1, 4), np.float32)
    inputs = [triton.InferInput(n, [1, 4], "FP32") for n in ("INPUT0", "INPUT1")]
    for tin in inputs:
        tin.set_data_from_numpy(a)
    with pytest.raises(InferenceServerException, match="missing credentials"):
        client.infer("add_sub", inputs)
    result = client.infer("add_sub", inputs, headers={"Authorization": f"Bearer {INFER_KEY}"})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    client.close()


def test_rate_limit_answers_429_with_retry_after(secured_hub: HubProcess) -> None:
    statuses = []
    retry_after = None
    for _ in range(4):
        status, reply, headers = call(secured_hub, "/v2/models/add_sub/infer", token=SLOW_KEY)
        statuses.append(status)
        if status == 429:
            retry_after = {k.lower(): v for k, v in headers.items()}["retry-after"]
            assert "rate limit of 1 requests/s for 'slow' exceeded" in reply["error"]
    assert statuses[:2] == [200, 200]
    assert 429 in statuses[2:]
    assert retry_after is not None
    assert int(retry_after) >= 1
    assert (
        call(secured_hub, "/v2/models/add_sub/infer", token=INFER_KEY)[0] == 200
    )  # others unaffected


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # no packet is sent; this picks the outbound interface
            address = str(sock.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_without_credentials_the_hub_answers_loopback_only(
    repository: Path, tmp_path: Path
) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    hub = HubProcess(
        repository=repository,
        workdir=tmp_path,
        config={"host": "0.0.0.0", "load_models": ["add_sub"]},
    )
    hub.start()
    try:
        assert call(hub, "/v2/models/add_sub/infer")[0] == 200
        status, reply, _ = call(hub, "/v2/models/add_sub/infer", host=address)
        assert status == 403
        assert "serves loopback clients only" in reply["error"]
        assert call(hub, "/v2/health/live", method="GET", host=address)[0] == 200
        assert (
            "serving loopback clients only" in hub.log
            or "answering loopback clients only" in hub.log
        )
    finally:
        hub.stop()


def test_sigterm_lets_in_flight_requests_finish(repository: Path, tmp_path: Path) -> None:
    hub = HubProcess(
        repository=repository, workdir=tmp_path, config={"load_models": ["slow_batch"]}
    )
    hub.start()
    results: list[tuple[int, dict[str, Any], dict[str, str]]] = []
    # The batch waits 1.5 s for company, so the request is still in flight when SIGTERM lands.
    caller = threading.Thread(
        target=lambda: results.append(call(hub, "/v2/models/slow_batch/infer"))
    )
    caller.start()
    time.sleep(0.5)
    assert hub.process is not None
    hub.process.send_signal(signal.SIGTERM)
    caller.join(timeout=20)
    code = hub.stop()
    assert results, "the in-flight request got no answer"
    status, reply, _ = results[0]
    assert status == 200, reply
    assert reply["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    assert "hub stopped" in hub.log


def test_invalid_settings_stop_the_hub_at_start_with_a_clear_message(
    repository: Path, tmp_path: Path
) -> None:
    hub = HubProcess(
        repository=repository,
        workdir=tmp_path,
        config={"port": 70000, "auth": {"api_keys": [{"name": "x", "key": "short"}]}},
    )
    with pytest.raises(RuntimeError, match="exited with 2") as info:
        hub.start()
    message = str(info.value)
    assert "auth.api_keys.0" in message
    assert "shorter than 16 characters" in message


def test_environment_variables_configure_the_hub(repository: Path, tmp_path: Path) -> None:
    hub = HubProcess(
        repository=repository,
        workdir=tmp_path,
        env={
            "HYBRID_HUB_LOAD_MODELS": '["add_sub"]',
            "HYBRID_HUB_LIMITS__PAYLOAD_MAX_BYTES": "100",
        },
    )
    hub.start()
    try:
        status, reply, _ = call(hub, "/v2/models/add_sub/infer")
        assert status == 413
        assert "the limit is 100" in reply["error"]
        index = {e["name"]: e["state"] for e in call(hub, "/v2/repository/index", body=b"")[1]}  # type: ignore[union-attr]
        assert index == {"add_sub": "READY", "slow_batch": "UNAVAILABLE"}
    finally:
        hub.stop()


def test_metrics_can_require_credentials(repository: Path, tmp_path: Path) -> None:
    hub = HubProcess(
        repository=repository,
        workdir=tmp_path,
        config={
            "load_models": "none",
            "metrics_public": False,
            "auth": {
                "api_keys": [
                    {"name": "app", "key": INFER_KEY, "scopes": ["infer"]},
                    {"name": "ops", "key": ADMIN_KEY, "scopes": ["infer", "admin"]},
                ]
            },
        },
    )
    hub.start()
    try:
        assert _get(hub, "/metrics", None)[0] == 401
        assert _get(hub, "/metrics", INFER_KEY)[0] == 403
        status, text = _get(hub, "/metrics", ADMIN_KEY)
        assert status == 200
        assert "hub_models_loaded" in text
    finally:
        hub.stop()


def _get(hub: HubProcess, path: str, token: str | None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()
