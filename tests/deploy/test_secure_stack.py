"""A real hub pair and a real agent through the shipped secured broker (TLS, passwords, ACL):
answers at the edge and in the cloud, the fleet view fed by retained statuses and Last Wills,
two replicas sharing the MQTT load and one surviving the other's SIGKILL.

One stack per module: the tests run in file order and the last one kills a hub.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.deploy import promql
from tests.integration.test_fallback_outages import CLIENTS, Stream, Trigger
from tests.support.fallback import AgentProcess, fallback_repository, hub_metric, wait_hub_connected
from tests.support.hub import HubProcess
from tests.support.models import DIGITS_INPUT, DigitsModels, ensure_digits_models, require
from tests.support.secure_broker import SecureBroker

pytestmark = pytest.mark.integration

DEVICE = "dev-a"
THRESHOLD = 0.9
"""The edge model hands a digit to the cloud under this confidence: some go, most stay."""


@dataclass
class Stack:
    broker: SecureBroker
    hubs: list[HubProcess]
    agent: AgentProcess
    digits: DigitsModels


@pytest.fixture(scope="module")
def stack(secure_broker: SecureBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    digits: DigitsModels = require(ensure_digits_models)
    root = tmp_path_factory.mktemp("stack")
    repository = fallback_repository(root / "repo", digits)
    hubs = []
    agent = None
    try:
        for i in range(2):
            (root / f"hub{i}").mkdir()
            hub = HubProcess(
                repository=repository,
                workdir=root / f"hub{i}",
                config={"mqtt": secure_broker.hub_mqtt()},
            )
            hubs.append(hub)
            hub.start()
            wait_hub_connected(hub)
        agent = AgentProcess(
            workdir=root / "agent",
            config={
                "device_id": DEVICE,
                "device_class": secure_broker.credentials.devices[DEVICE],
                "log_level": "WARNING",
                "models": [
                    {
                        "name": "digits",
                        "path": str(digits.model("int8")),
                        "fallback": {
                            "policy": "on_low_confidence",
                            "threshold": THRESHOLD,
                            "cloud_model": "cloud_digits",
                        },
                    }
                ],
                "cloud": secure_broker.agent_cloud(
                    DEVICE,
                    retry_interval_s=0.3,
                    reconnect_min_s=0.05,
                    reconnect_max_s=0.5,
                    breaker={"failures": 1000},
                    remote_models=[
                        {
                            "name": "add",
                            "cloud_model": "add_sub",
                            "deadline_s": 20.0,
                            "on_cloud_unavailable": "queue",
                        }
                    ],
                ),
            },
        )
        agent.start()
        yield Stack(broker=secure_broker, hubs=hubs, agent=agent, digits=digits)
    finally:
        if agent is not None:
            agent.stop()
        for hub in hubs:
            hub.stop()


def _get(hub: HubProcess, path: str) -> Any:
    with urllib.request.urlopen(f"http://{hub.url}{path}", timeout=10) as reply:
        return json.loads(reply.read())


def _wait_for(predicate: Any, what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _device(hub: HubProcess, device_id: str) -> dict[str, Any] | None:
    return next((d for d in _get(hub, "/v1/fleet")["devices"] if d["device_id"] == device_id), None)


def test_the_agent_answers_at_the_edge_and_through_the_secured_broker(stack: Stack) -> None:
    x, _ = stack.digits.data()
    served: dict[str, int] = {"edge": 0, "cloud": 0}
    with stack.agent.client(timeout_s=30) as client:
        for i in range(40):
            result = client.infer("digits", {DIGITS_INPUT: x[i : i + 1]}, request_id=f"d{i}")
            served[result.served_by] += 1
            if result.served_by == "cloud":
                assert result.fallback_reason == "low_confidence"
        remote = client.infer(
            "add",
            {"INPUT0": np.full((1, 4), 2, np.float32), "INPUT1": np.ones((1, 4), np.float32)},
            request_id="remote-1",
        )
    assert served["edge"] > 0
    assert served["cloud"] > 0, "no digit went to the cloud: the threshold is too low"
    assert remote.served_by == "cloud"
    np.testing.assert_array_equal(remote.outputs["OUTPUT0"], np.full((1, 4), 3.0, np.float32))
    answered = sum(
        hub_metric(hub, 'hub_mqtt_requests_total{outcome="answered"}') for hub in stack.hubs
    )
    assert answered >= served["cloud"] + 1
    assert "Not authorized" not in stack.broker.log


def test_every_hub_lists_the_agent_online_with_its_class(stack: Stack) -> None:
    for hub in stack.hubs:
        record = _wait_for(lambda hub=hub: _device(hub, DEVICE), f"{DEVICE} in /v1/fleet")
        assert record["state"] == "online"
        assert record["device_class"] == stack.broker.credentials.devices[DEVICE]
        assert record["models"] == ["digits"]
        assert hub_metric(hub, 'hub_devices{state="online"}') >= 1


def test_a_vanished_device_turns_offline_and_a_forged_status_is_refused(stack: Stack) -> None:
    hub = stack.hubs[0]
    online = {"device_id": "dev-b", "state": "online", "device_class": "beta"}
    offline = {"device_id": "dev-b", "state": "offline", "device_class": "beta"}
    malformed_before = hub_metric(hub, 'hub_device_status_messages_total{outcome="malformed"}')
    device = stack.broker.probe(
        "dev-b", will=("hybrid/v1/dev-b/status", json.dumps(offline).encode())
    )
    try:
        assert device.accepted, device.connect_rc
        device.publish("hybrid/v1/dev-b/status", json.dumps(online).encode(), retain=True)
        _wait_for(lambda: (_device(hub, "dev-b") or {}).get("state") == "online", "dev-b online")
        # dev-b may only write its own status topic, so it claims dev-a there: refused.
        forged = {"device_id": DEVICE, "state": "offline"}
        device.publish("hybrid/v1/dev-b/status", json.dumps(forged).encode(), retain=True)
        device.publish("hybrid/v1/dev-b/status", b"not json", retain=True)
        _wait_for(
            lambda: (
                hub_metric(hub, 'hub_device_status_messages_total{outcome="malformed"}')
                >= malformed_before + 2
            ),
            "two malformed statuses counted",
        )
        assert _device(hub, DEVICE)["state"] == "online"
        assert _device(hub, "dev-b")["state"] == "online"
        device.publish("hybrid/v1/dev-b/status", json.dumps(online).encode(), retain=True)
        device.vanish()
    finally:
        device.close()
    _wait_for(lambda: (_device(hub, "dev-b") or {}).get("state") == "offline", "dev-b offline")
    assert hub_metric(hub, 'hub_devices{state="offline"}') == 1
    listed = _get(hub, "/v1/fleet?state=offline")
    assert [d["device_id"] for d in listed["devices"]] == ["dev-b"]
    assert listed["counts"]["offline"] == 1
    with pytest.raises(urllib.error.HTTPError) as bad:
        _get(hub, "/v1/fleet?state=sleeping")
    assert bad.value.code == 400


def test_every_metric_the_dashboard_alerts_and_autoscaler_query_is_exported(
    stack: Stack,
) -> None:
    """Checked against the real /metrics of both hubs and the agent, after the traffic above:
    edge and cloud answers, a low-confidence fallback, a remote model, online and offline
    devices, and here a malformed request."""
    with stack.broker.probe("dev-b") as device:
        device.publish("hybrid/v1/dev-b/infer/request", b"{not json")
    _wait_for(
        lambda: any(
            hub_metric(hub, 'hub_mqtt_requests_total{outcome="malformed"}') for hub in stack.hubs
        ),
        "a malformed request counted",
    )
    pages = [_text(f"http://{hub.url}/metrics") for hub in stack.hubs]
    pages.append(stack.agent.metrics())
    exposition = promql.Exposition.parse(pages)
    problems = {
        where: found
        for where, expr in promql.queries().items()
        if (found := exposition.problems(expr))
    }
    assert problems == {}


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def test_two_hubs_share_the_requests_and_one_killed_loses_nothing(stack: Stack) -> None:
    first, second = stack.hubs
    before = [hub_metric(h, 'hub_mqtt_requests_total{outcome="answered"}') for h in stack.hubs]
    shares: list[float] = []

    def kill_first() -> None:
        shares.extend(
            hub_metric(h, 'hub_mqtt_requests_total{outcome="answered"}') - b
            for h, b in zip(stack.hubs, before, strict=True)
        )
        assert first.process is not None
        first.process.kill()

    trigger = Trigger([100], kill_first)
    with stack.agent.client(timeout_s=60) as client:
        stream = Stream(client=client, total=300, on_progress=trigger)
        stream.run()
        stream.check()
    first.process.wait()
    first.process = None
    assert trigger.fired == 1
    assert shares[0] > 0, f"the first hub answered none of the first 100: {shares}"
    assert shares[1] > 0, f"the second hub answered none of the first 100: {shares}"
    after_second = hub_metric(second, 'hub_mqtt_requests_total{outcome="answered"}')
    print(
        f"answered before the kill: {shares[0]:.0f} by the first hub, {shares[1]:.0f} by the "
        f"second; after it {after_second - before[1] - shares[1]:.0f} by the second, "
        f"{len(stream.queued)} queued (202) and fetched later"
    )
    # Everything not answered when the first hub died was answered by the second.
    assert after_second - before[1] - shares[1] >= 300 - sum(shares) - CLIENTS
