"""One device's identity used against another, through the shipped secured broker (TLS,
passwords, ACL) with a real hub and a real agent.

``dev-a`` runs an agent streaming requests to the cloud; ``dev-b``, holding only its own
credentials, tries to read dev-a's answers (its topic, ``+`` and ``#``), to publish requests and
statuses as dev-a, and to make the hub answer into dev-a's reply topic by naming it as the MQTT 5
Response Topic of its own requests. Unauthorised deliveries, counted at both ends, must be 0, and
dev-a's stream must come back whole and correct.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols import encode_mqtt_request
from tests.reliability.conftest import agent_config, record, sized
from tests.reliability.traffic import TimedStream
from tests.support.fallback import AgentProcess, hub_metric, wait_hub_connected
from tests.support.hub import HubProcess
from tests.support.secure_broker import SecureBroker, make_credentials

pytestmark = pytest.mark.integration

DEVICES = {"dev-a": "alpha", "dev-b": "beta"}


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    root: Path = tmp_path_factory.mktemp("secure-broker")
    broker = SecureBroker(
        workdir=root / "broker", credentials=make_credentials(root / "creds", DEVICES)
    )
    broker.start()
    yield broker
    broker.close()


def forged_request(i: int, *, request_id: str) -> bytes:
    return encode_mqtt_request(
        "add_sub",
        {
            "INPUT0": np.full((1, 4), 10_000.0 + i, np.float32),
            "INPUT1": np.ones((1, 4), np.float32),
        },
        id=request_id,
    )


def _with_reply(topic: str, correlation: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = topic
    props.CorrelationData = correlation
    return props


def test_another_devices_identity_gets_nothing(
    secure_broker: SecureBroker, repository: Path, tmp_path: Path
) -> None:
    total = sized(300, 3000)
    hub = HubProcess(
        repository=repository, workdir=tmp_path / "hub", config={"mqtt": secure_broker.hub_mqtt()}
    )
    agent = AgentProcess(
        workdir=tmp_path / "agent",
        config={
            **agent_config("unused"),
            "device_id": "dev-a",
        },
    )
    agent.config["cloud"].update(secure_broker.agent_cloud("dev-a"))  # type: ignore[index]
    hub.workdir.mkdir()
    hub.start()
    rogue = None
    try:
        wait_hub_connected(hub)
        agent.start()
        rogue = secure_broker.probe("dev-b")
        assert rogue.accepted
        for topic in ("hybrid/v1/dev-a/infer/response", "hybrid/v1/+/infer/response", "#"):
            rogue.subscribe(topic)
        own_replies = "hybrid/v1/dev-b/infer/response"
        rogue.subscribe(own_replies)

        def attack(answered: int) -> None:
            """Each answer dev-a gets sets off three forgeries from dev-b."""
            if answered % 10:
                return
            n = answered
            # 1. a request published as dev-a, answered to dev-b if the broker let it through
            rogue.client.publish(
                "hybrid/v1/dev-a/infer/request",
                forged_request(n, request_id=f"as-a-{n}"),
                qos=1,
                properties=_with_reply(own_replies, f"as-a-{n}".encode()),
            )
            # 2. dev-b's own request, answered into dev-a's reply topic with one of dev-a's ids
            for request_id in (f"s{n + 5}", f"deputy-{n}"):
                rogue.client.publish(
                    "hybrid/v1/dev-b/infer/request",
                    forged_request(n, request_id=request_id),
                    qos=1,
                    properties=_with_reply("hybrid/v1/dev-a/infer/response", request_id.encode()),
                )
            # 3. a status as dev-a
            rogue.client.publish("hybrid/v1/dev-a/status", b'{"state": "offline"}', qos=1)

        with agent.client(timeout_s=60) as client:
            stream = TimedStream(client=client, total=total, on_progress=attack)
            stream.run()
        figures = stream.figures()
        time.sleep(1.0)  # let late forgeries land
        leaked = [
            m
            for m in rogue.received(1.0)
            if m.topic.startswith("hybrid/v1/dev-a/")
            or (m.topic == own_replies and b"as-a-" in (m.properties.CorrelationData or b""))
        ]
        unknown_at_a = agent.metric('edge_agent_cloud_answers_dropped_total{reason="unknown"}')
        duplicate_at_a = agent.metric('edge_agent_cloud_answers_dropped_total{reason="duplicate"}')
        refused_by_hub = hub_metric(hub, 'hub_mqtt_requests_total{outcome="malformed"}')
        record(
            "device_identity",
            requests=total,
            forgeries=3 * (total // 10) + total // 10,
            leaked_to_rogue=len(leaked),
            forged_answers_at_victim=unknown_at_a + duplicate_at_a,
            wrong_answers_at_victim=figures["wrong"],
            refused_by_hub=refused_by_hub,
            **{k: figures[k] for k in ("lost", "duplicated", "failed")},
        )
        assert leaked == []
        assert figures["wrong"] == 0
        assert figures["lost"] == 0
        assert figures["duplicated"] == 0
        assert unknown_at_a + duplicate_at_a == 0
    finally:
        if rogue is not None:
            rogue.close()
        agent.stop()
        hub.stop()
