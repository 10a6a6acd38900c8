"""How the agent tells its app about an error answer from the cloud."""

from __future__ import annotations

import pytest

from edge_agent.cloud.calls import decode_answer
from edge_agent.errors import CloudRequestError
from protocols.envelope import encode_mqtt_error


@pytest.mark.parametrize(("cloud", "app"), [(400, 400), (404, 404), (413, 413)])
def test_a_request_the_cloud_blames_keeps_its_status(cloud: int, app: int) -> None:
    with pytest.raises(CloudRequestError, match="expects") as refused:
        decode_answer(encode_mqtt_error("input 'x' expects [-1, 4]", status=cloud), model="m")
    assert refused.value.status == app
    assert refused.value.cloud_status == cloud


@pytest.mark.parametrize("cloud", [None, 401, 403, 429, 500, 503])
def test_the_clouds_own_trouble_is_a_bad_gateway(cloud: int | None) -> None:
    with pytest.raises(CloudRequestError) as refused:
        decode_answer(encode_mqtt_error("overloaded", status=cloud), model="m")
    assert refused.value.status == 502
    assert refused.value.cloud_status == cloud


def test_undecodable_answers_are_a_bad_gateway() -> None:
    with pytest.raises(CloudRequestError, match="cannot be decoded") as refused:
        decode_answer(b"\x00garbage", model="m")
    assert refused.value.status == 502
