"""The request properties the link packs by hand are the bytes paho itself would send."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.cloud.link import request_properties


@pytest.mark.parametrize("correlation", [b"r-1", b"x" * 300, "é-ü".encode()])
@pytest.mark.parametrize("expiry_s", [1, 5, 4_294_967_295])
def test_packed_properties_match_paho(correlation: bytes, expiry_s: int) -> None:
    reference = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    reference.MessageExpiryInterval = expiry_s
    reference.ContentType = "application/vnd.hybrid.hib1"
    reference.ResponseTopic = "hybrid/v1/cam-01/infer/response"
    reference.CorrelationData = correlation
    packed = request_properties(
        response_topic=b"hybrid/v1/cam-01/infer/response",
        correlation=correlation,
        expiry_s=expiry_s,
        content_type=b"application/vnd.hybrid.hib1",
    ).pack()
    assert packed == reference.pack()
    decoded = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    decoded.unpack(packed)
    assert decoded.CorrelationData == correlation
    assert decoded.MessageExpiryInterval == expiry_s


def test_the_disconnect_reason_names_what_really_happened() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from edge_agent.cloud.link import disconnect_reason

    unspecified = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
    assert disconnect_reason(
        unspecified,
        from_broker=False,
        last_error="failed to receive on socket: [Errno 104] Connection reset by peer",
    ) == ("Unspecified error: failed to receive on socket: [Errno 104] Connection reset by peer")
    assert "without a DISCONNECT" in disconnect_reason(
        unspecified, from_broker=False, last_error=None
    )
    taken = ReasonCode(PacketTypes.DISCONNECT, "Session taken over")
    assert (
        disconnect_reason(taken, from_broker=True, last_error=None)
        == "the broker disconnected us: Session taken over"
    )
    keepalive = ReasonCode(PacketTypes.DISCONNECT, "Keep alive timeout")
    assert disconnect_reason(keepalive, from_broker=False, last_error=None) == "Keep alive timeout"
