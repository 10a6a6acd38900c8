"""A 64 MB request through a real agent falling back to a real hub: the agent's resident memory
goes back down within 10 s, and the hub sees the large message once, not once per second.

Figures: the agent's RSS before, at its peak, and 10 s after; copies the hub received.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Callable

import numpy as np
import pytest

from tests.reliability.conftest import record
from tests.reliability.rss import peak_rss_bytes, rss_bytes
from tests.support.broker import Broker
from tests.support.fallback import AgentProcess
from tests.support.hub import HubProcess

pytestmark = pytest.mark.integration

ROWS = 1_950_000  # x 4 FP32 x 2 inputs = 62.4 MB of tensor data, under the 64 MiB body limit
MB = 1024 * 1024


def _hub_requests(hub: HubProcess) -> float:
    """MQTT requests the hub took, every outcome."""
    with urllib.request.urlopen(f"http://{hub.url}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hub_mqtt_requests_total{")
    )


def _large_body() -> tuple[bytes, int]:
    data = np.ones((ROWS, 4), np.float32).tobytes()  # each input
    header = json.dumps(
        {
            "id": "large-1",
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [ROWS, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                },
                {
                    "name": "INPUT1",
                    "shape": [ROWS, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                },
            ],
        }
    ).encode()
    return header + data + data, len(header)


def test_a_64_mb_fallback_leaves_no_memory_behind(
    make_broker: Callable[[], Broker],
    hubs: Callable[[Broker], HubProcess],
    agents: Callable[..., AgentProcess],
) -> None:
    broker = make_broker()
    hub = hubs(broker)
    agent = agents(broker.address, retry_interval_s=1.0)
    assert agent.process is not None
    pid = agent.process.pid
    client = agent.client()
    small = {"INPUT0": np.ones((1, 4), np.float32), "INPUT1": np.ones((1, 4), np.float32)}
    assert client.infer("add", small).served_by == "cloud"
    before = rss_bytes(pid)
    received_before = _hub_requests(hub)

    body, header_length = _large_body()
    conn = http.client.HTTPConnection("127.0.0.1", agent.api_port, timeout=60)
    conn.request(
        "POST",
        "/v2/models/add/infer",
        body=body,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    del body
    assert response.status < 500, answer[:300]
    peak = peak_rss_bytes(pid)
    time.sleep(10)
    after = rss_bytes(pid)
    copies = _hub_requests(hub) - received_before
    assert client.infer("add", small).served_by == "cloud"
    record(
        "agent_64mb_fallback",
        status=response.status,
        rss_before_mb=before / MB,
        rss_peak_mb=peak / MB,
        rss_after_10s_mb=after / MB,
        hub_copies=copies,
    )
    assert after - before < 50 * MB
    assert copies <= 2
