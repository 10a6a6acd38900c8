from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.client import EdgeClient
from edge_agent.errors import ConnectError, ResponseError
from tests.support.broker import free_port
from tests.support.models import DIGITS_INPUT, DIGITS_OUTPUT, DigitsModels


@pytest.fixture
def agent(make_agent: Callable[..., Agent]) -> Agent:
    return make_agent(idle_timeout_s=0.3)


def test_binary_and_json_give_the_same_arrays(agent: Agent, digits: DigitsModels) -> None:
    x, _ = digits.data()
    with (
        EdgeClient(str(agent.api_address)) as binary,
        EdgeClient(str(agent.api_address), binary=False) as plain,
    ):
        a = binary.infer("digits_int8", {DIGITS_INPUT: x[:6]}, request_id="b")
        b = plain.infer("digits_int8", {DIGITS_INPUT: x[:6]}, request_id="j")
    np.testing.assert_array_equal(a.outputs[DIGITS_OUTPUT], b.outputs[DIGITS_OUTPUT])
    assert (a.id, b.id) == ("b", "j")
    assert a.parameters == b.parameters == {"served_by": "edge"}
    assert a.served_by == "edge"


def test_selected_outputs_and_versions(agent: Agent, digits: DigitsModels) -> None:
    x, _ = digits.data()
    with EdgeClient(str(agent.api_address)) as client:
        result = client.infer(
            "digits_fp16", {DIGITS_INPUT: x[:1]}, outputs=[DIGITS_OUTPUT], version="1"
        )
        assert list(result.outputs) == [DIGITS_OUTPUT]
        with pytest.raises(ResponseError) as excinfo:
            client.infer("digits_fp16", {DIGITS_INPUT: x[:1]}, version="2")
        assert excinfo.value.status == 404


def test_a_connection_the_agent_closed_while_idle_is_replaced(
    agent: Agent, digits: DigitsModels
) -> None:
    x, _ = digits.data()
    with EdgeClient(str(agent.api_address)) as client:
        first = client.infer("digits_fp32", {DIGITS_INPUT: x[:2]})
        time.sleep(0.6)  # past the agent's idle timeout: it closes the kept-alive connection
        second = client.infer("digits_fp32", {DIGITS_INPUT: x[:2]})
    np.testing.assert_array_equal(first.outputs[DIGITS_OUTPUT], second.outputs[DIGITS_OUTPUT])


def test_metadata_and_readiness(agent: Agent) -> None:
    with EdgeClient(str(agent.api_address)) as client:
        assert client.server_live()
        assert client.server_ready()
        assert client.model_ready("digits_fp32")
        assert client.model_metadata("digits_int8").inputs[0].name == DIGITS_INPUT
        assert client.server_metadata().name == "edge-agent"
        with pytest.raises(ResponseError) as excinfo:
            client.model_ready("nope")
        assert excinfo.value.status == 404
        assert "unknown model" in excinfo.value.message


def test_nothing_listening_is_a_connect_error() -> None:
    with (
        EdgeClient(f"127.0.0.1:{free_port()}", timeout_s=2) as client,
        pytest.raises(ConnectError, match="cannot reach the agent"),
    ):
        client.server_live()


def test_a_bad_address_is_a_connect_error() -> None:
    with pytest.raises(ConnectError, match="address"):
        EdgeClient("no-port-here")
