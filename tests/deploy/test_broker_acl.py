"""The shipped broker configuration (deploy/mosquitto/mosquitto.conf, its ACL and the credentials
script) holds: real Mosquitto, real paho clients over TLS.

Negative checks end with a sentinel: the same publisher sends an allowed message last, and
Mosquitto delivers one publisher's messages in order, so once the sentinel is in, anything that
leaked would be in too.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from tests.support.secure_broker import Probe, SecureBroker

pytestmark = pytest.mark.integration

SENTINEL = b"sentinel"


@pytest.fixture
def probes(secure_broker: SecureBroker) -> Iterator[list[Probe]]:
    """Collects probes so that every one is closed (a refused one would keep retrying)."""
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()


def _open(probes: list[Probe], probe: Probe) -> Probe:
    probes.append(probe)
    return probe


def _until_sentinel(probe: Probe, timeout_s: float = 10.0) -> list[tuple[str, bytes]]:
    """What ``probe`` received up to and including the sentinel."""
    got = []
    while True:
        message = probe.messages.get(timeout=timeout_s)
        got.append((message.topic, bytes(message.payload)))
        if message.payload == SENTINEL:
            return got


def _granted(codes: list[mqtt.ReasonCode]) -> bool:
    return all(not code.is_failure for code in codes)


def test_a_device_publishes_only_on_its_own_topics(
    secure_broker: SecureBroker, probes: list[Probe]
) -> None:
    hub = _open(probes, secure_broker.probe("hub", hub_listener=True, client_id="hub-watch"))
    assert hub.accepted, hub.connect_rc
    for topic in (
        "$share/hybrid-hub/hybrid/v1/+/infer/request",
        "hybrid/v1/+/status",
        "hybrid/v1/+/telemetry",
    ):
        assert _granted(hub.subscribe(topic))
    dev_a = _open(probes, secure_broker.probe("dev-a"))
    assert dev_a.accepted, dev_a.connect_rc
    for kind in ("infer/request", "status", "telemetry"):
        dev_a.publish(f"hybrid/v1/dev-b/{kind}", b"forged by dev-a")
        dev_a.publish(f"hybrid/v1/dev-a/{kind}", f"own {kind}".encode())
    dev_a.publish("hybrid/v1/dev-b/infer/response", b"forged answer")
    dev_a.publish("hybrid/v1/fleet/alpha/models", b"forged announcement")
    dev_a.publish("hybrid/v1/dev-a/telemetry", SENTINEL)

    got = _until_sentinel(hub)
    assert got == [
        ("hybrid/v1/dev-a/infer/request", b"own infer/request"),
        ("hybrid/v1/dev-a/status", b"own status"),
        ("hybrid/v1/dev-a/telemetry", b"own telemetry"),
        ("hybrid/v1/dev-a/telemetry", SENTINEL),
    ]


def test_a_device_reads_only_its_own_answers_and_its_fleets_announcements(
    secure_broker: SecureBroker, probes: list[Probe]
) -> None:
    dev_a = _open(probes, secure_broker.probe("dev-a"))
    dev_b = _open(probes, secure_broker.probe("dev-b"))
    for topic in (
        "hybrid/v1/dev-a/infer/response",
        "hybrid/v1/dev-b/infer/response",
        "hybrid/v1/+/infer/response",
        "hybrid/v1/+/infer/request",
        "hybrid/v1/fleet/+/models",
        "#",
        "$SYS/#",
        "$share/hybrid-hub/hybrid/v1/+/infer/request",
    ):
        dev_a.subscribe(topic)  # granted or not, only allowed messages may arrive
    assert _granted(dev_b.subscribe("hybrid/v1/dev-b/infer/response"))
    assert _granted(dev_b.subscribe("hybrid/v1/fleet/beta/models"))

    hub = _open(probes, secure_broker.probe("hub", hub_listener=True, client_id="hub-answer"))
    hub.publish("hybrid/v1/dev-b/infer/response", b"for dev-b")
    hub.publish("hybrid/v1/fleet/beta/models", b"beta announcement")
    hub.publish("hybrid/v1/fleet/alpha/models", b"alpha announcement")
    hub.publish("hybrid/v1/dev-a/infer/response", b"for dev-a")
    dev_b.publish("hybrid/v1/dev-b/infer/request", b"dev-b asks")
    hub.publish("hybrid/v1/dev-a/infer/response", SENTINEL)

    received = set(_until_sentinel(dev_a))  # '#' and a topic filter both match: duplicates
    assert received == {
        ("hybrid/v1/fleet/alpha/models", b"alpha announcement"),
        ("hybrid/v1/dev-a/infer/response", b"for dev-a"),
        ("hybrid/v1/dev-a/infer/response", SENTINEL),
    }
    # The positive control on the other side: dev-b got its own answer and its fleet's.
    assert [(m.topic, bytes(m.payload)) for m in dev_b.received(5.0)] == [
        ("hybrid/v1/dev-b/infer/response", b"for dev-b"),
        ("hybrid/v1/fleet/beta/models", b"beta announcement"),
    ]


def test_anonymous_wrong_password_and_plain_tcp_are_refused(
    secure_broker: SecureBroker, probes: list[Probe]
) -> None:
    creds = secure_broker.credentials
    refused = {
        "anonymous": secure_broker.probe(None),
        "wrong password": secure_broker.probe("dev-a", password="not-the-password"),
        "another device's password": secure_broker.probe("dev-a", password=creds.password("dev-b")),
        "unknown user": secure_broker.probe("dev-c", password=creds.password("dev-a")),
        "hub listener without a client certificate": Probe(
            secure_broker.hub_port, creds.ca_file, username="hub", password=creds.password("hub")
        ),
        "hub listener, device password, no certificate": Probe(
            secure_broker.hub_port,
            creds.ca_file,
            username="dev-a",
            password=creds.password("dev-a"),
        ),
    }
    probes.extend(refused.values())
    for what, probe in refused.items():
        probe.wait_dropped(5.0)
        assert not probe.accepted, f"{what}: the broker accepted it ({probe.connect_rc})"
    for what in ("anonymous", "wrong password", "another device's password", "unknown user"):
        rc = refused[what].connect_rc
        assert rc is not None, what
        assert rc.is_failure, f"{what}: {rc}"
        assert rc.getName() in ("Not authorized", "Bad user name or password"), f"{what}: {rc}"

    # No TLS at all: an MQTT CONNECT in the clear gets no CONNACK.
    connect = bytes.fromhex("101000044d5154540402003c0004") + b"dev-a"  # malformed is fine
    with socket.create_connection(("127.0.0.1", secure_broker.device_port), timeout=5) as sock:
        sock.sendall(connect)
        try:
            reply = sock.recv(16)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert not reply.startswith(b"\x20"), reply

    # The positive control: the same broker lets the right password in.
    good = _open(probes, secure_broker.probe("dev-a"))
    assert good.accepted, good.connect_rc


@pytest.mark.parametrize("client_id", ["dev-b", "+", "#", "dev-b/+", "hybrid/v1/dev-b/#"])
def test_a_client_id_with_wildcards_or_another_device_gains_nothing(
    secure_broker: SecureBroker, probes: list[Probe], client_id: str
) -> None:
    hub = _open(probes, secure_broker.probe("hub", hub_listener=True, client_id="hub-ids"))
    assert _granted(hub.subscribe("$share/hybrid-hub/hybrid/v1/+/infer/request"))
    sneaky = _open(probes, secure_broker.probe("dev-a", client_id=client_id))
    assert sneaky.accepted, sneaky.connect_rc
    sneaky.subscribe("hybrid/v1/dev-b/infer/response")
    sneaky.subscribe("hybrid/v1/+/infer/response")
    sneaky.subscribe("hybrid/v1/dev-a/infer/response")
    sneaky.publish("hybrid/v1/dev-b/infer/request", b"as dev-b")
    sneaky.publish("hybrid/v1/dev-a/infer/request", SENTINEL)
    hub.publish("hybrid/v1/dev-b/infer/response", b"dev-b's answer")
    hub.publish("hybrid/v1/dev-a/infer/response", SENTINEL)

    assert _until_sentinel(hub) == [("hybrid/v1/dev-a/infer/request", SENTINEL)]
    assert set(_until_sentinel(sneaky)) == {("hybrid/v1/dev-a/infer/response", SENTINEL)}


def test_the_last_will_reaches_the_hub_on_the_devices_own_status_topic(
    secure_broker: SecureBroker, probes: list[Probe]
) -> None:
    hub = _open(probes, secure_broker.probe("hub", hub_listener=True, client_id="hub-will"))
    assert _granted(hub.subscribe("hybrid/v1/+/status"))
    offline = b'{"device_id": "dev-b", "state": "offline"}'
    device = _open(probes, secure_broker.probe("dev-b", will=("hybrid/v1/dev-b/status", offline)))
    assert device.accepted, device.connect_rc
    device.vanish()
    message = hub.messages.get(timeout=10)
    assert (message.topic, bytes(message.payload)) == ("hybrid/v1/dev-b/status", offline)
