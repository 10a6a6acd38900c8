"""The classification extension through the local API's real HTTP server, in process: Triton's
shapes by whether the model's first dimension is the batch, decided from its signature, for
answers given at once and answers queued for the cloud and fetched later."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.addresses import TcpAddress
from edge_agent.agent import Agent
from edge_agent.cloud.outbox import AnswerOutcome
from protocols import encode_mqtt_response
from tests.support.broker import free_port
from tests.support.models import (
    DIGITS_INPUT,
    DIGITS_LABELS,
    DIGITS_OUTPUT,
    DigitsModels,
    fixed_batch_model,
)

K = 3


def _post(agent: Agent, model: str, x: np.ndarray, **request: Any) -> tuple[int, dict[str, Any]]:
    body = {
        "inputs": [
            {
                "name": DIGITS_INPUT,
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
        "outputs": [{"name": DIGITS_OUTPUT, "parameters": {"classification": K}}],
        **request,
    }
    return _call(agent, "POST", f"/v2/models/{model}/infer", json.dumps(body).encode())


def _call(
    agent: Agent, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    address = agent.api_address
    assert isinstance(address, TcpAddress)
    conn = http.client.HTTPConnection("127.0.0.1", address.port, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _classes(answer: dict[str, Any]) -> tuple[list[int], list[list[str]]]:
    """The classification output's shape, and its entries split at ``:``."""
    (output,) = answer["outputs"]
    assert output["datatype"] == "BYTES"
    return output["shape"], [entry.split(":") for entry in output["data"]]


def _top(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")[:K]]


@pytest.fixture
def fixed(digits: DigitsModels, tmp_path: Path) -> Path:
    return fixed_batch_model(digits, "fp32", tmp_path)


def test_a_batched_model_ranks_each_entry_and_a_fixed_shape_model_its_whole_output(
    make_agent: Callable[..., Agent], digits: DigitsModels, fixed: Path
) -> None:
    labels = str(digits.labels)
    agent = make_agent(
        models=[
            {"name": "batched", "path": str(digits.model("fp32")), "labels": labels},
            {"name": "fixed", "path": str(fixed), "labels": labels},
        ]
    )
    assert agent.registry.get("batched").batched
    assert not agent.registry.get("fixed").batched
    x, _ = digits.data()
    reference = digits.reference("fp32")

    status, answer = _post(agent, "batched", x[:4])
    assert status == 200
    shape, entries = _classes(answer)
    assert shape == [4, K]
    for row in range(4):
        got = entries[row * K : (row + 1) * K]
        assert [int(e[1]) for e in got] == _top(reference[row])
        assert [e[2] for e in got] == [DIGITS_LABELS[int(e[1])] for e in got]

    # Triton answers a [1, 10] output of a model without a batch dimension with shape [k].
    status, answer = _post(agent, "fixed", x[:1])
    assert status == 200
    shape, entries = _classes(answer)
    assert shape == [K]
    assert [int(e[1]) for e in entries] == _top(reference[0])
    scores = [float(e[0]) for e in entries]  # printed with six decimals
    np.testing.assert_allclose(scores, np.sort(reference[0])[::-1][:K], rtol=1e-5, atol=1e-6)

    status, error = _post(agent, "fixed", x[:2])  # fixed shapes take one row only
    assert status == 400
    assert "the model takes [1, 64]" in error["error"]


def test_a_bad_count_is_a_400_and_the_agent_keeps_serving(
    make_agent: Callable[..., Agent], digits: DigitsModels
) -> None:
    agent = make_agent()
    x, _ = digits.data()
    body = {
        "inputs": [{"name": DIGITS_INPUT, "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}],
        "outputs": [{"name": DIGITS_OUTPUT, "parameters": {"classification": 0}}],
    }
    status, error = _call(agent, "POST", "/v2/models/digits_fp32/infer", json.dumps(body).encode())
    assert status == 400
    assert "positive integer" in error["error"]
    labels = {"model": "digits_fp32", "error": "bad_request"}
    assert agent.metrics.registry.get_sample_value("edge_agent_request_errors_total", labels) == 1
    assert _post(agent, "digits_fp32", x[:2])[0] == 200


def test_queued_answers_are_classified_as_the_answering_model_would(
    make_agent: Callable[..., Agent], digits: DigitsModels, fixed: Path
) -> None:
    """The cloud is out of reach (nothing listens on the broker port), so every request waits in
    the real outbox; the hub's answers are then recorded there as they would arrive, and
    fetched through ``GET /v2/requests/{id}``."""
    queue = {"deadline_s": 1.0, "on_cloud_unavailable": "queue"}
    agent = make_agent(
        models=[
            {
                "name": "fixed",
                "path": str(fixed),
                "labels": str(digits.labels),
                "fallback": {"policy": "always", "cloud_model": "cloud_digits", **queue},
            }
        ],
        cloud={
            "broker": f"127.0.0.1:{free_port()}",
            "remote_models": [
                {"name": "remote", "cloud_model": "cloud_digits", **queue},
                {"name": "remote_flat", "cloud_model": "cloud_digits", "batched": False, **queue},
            ],
        },
    )
    x, _ = digits.data()
    scores = digits.reference("fp32")[:1]
    for model in ("fixed", "remote", "remote_flat"):
        status, pending = _post(agent, model, x[:1], id=f"q-{model}")
        assert status == 202, pending
        assert (pending["state"], pending["model_name"]) == ("pending", model)
    assert agent.cloud is not None
    assert agent.cloud.outbox is not None
    outbox = agent.cloud.outbox
    wire_ids = []
    for model in ("fixed", "remote", "remote_flat"):
        stored = outbox.get(f"q-{model}")
        assert stored is not None
        wire_ids.append(stored.wire_id)  # answers come back under the agent's own wire id
    answers = [
        (
            wire_id,
            encode_mqtt_response(
                {DIGITS_OUTPUT: scores},
                model_name="cloud_digits",
                model_version="1",
                id=wire_id,
                binary=True,
            ),
        )
        for wire_id in wire_ids
    ]
    assert agent.cloud.outbox.record_answers(answers) == [AnswerOutcome.STORED] * 3

    expected_shapes = {"fixed": [K], "remote": [1, K], "remote_flat": [K]}
    for model, expected in expected_shapes.items():
        status, answer = _call(agent, "GET", f"/v2/requests/q-{model}")
        assert status == 200, answer
        assert answer["parameters"] == {
            "served_by": "cloud",
            "fallback_reason": "always" if model == "fixed" else "missing",
            "queued": True,
        }
        shape, entries = _classes(answer)
        assert shape == expected
        assert [int(e[1]) for e in entries] == _top(scores[0])
        labelled = [len(e) == 3 for e in entries]
        assert labelled == [model == "fixed"] * K  # only the local model has labels
