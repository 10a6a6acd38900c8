"""The classification extension answers alike everywhere: the same outputs, asked for the same
top ``k``, through the hub over HTTP (a real ``cloud-hub serve`` with ONNX identity models),
through the edge agent's local API (a real agent with TFLite identity models) and through a
reference written from Triton's documentation and source (``tests.support.triton_classification``).

The models echo their input, so the test chooses the scores: with and without a batch
dimension, 2-D and 3-D, ``k`` of 1, of a few, and past the number of classes.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto

from edge_agent.addresses import TcpAddress
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from tests.support import onnx_models
from tests.support.hub import HubProcess, add_model
from tests.support.models import build_identity_model, require
from tests.support.triton_classification import triton_classification

pytestmark = pytest.mark.integration

LABELS = [f"class-{i}" for i in range(8)]
"""Fewer labels than classes: entries past them carry none, on every side."""


@dataclass(frozen=True)
class Case:
    model: str
    model_shape: list[int | None]
    """``None`` first: the model's first dimension is the batch."""
    request_shape: tuple[int, ...]
    datatype: str = "FP32"

    @property
    def batched(self) -> bool:
        return self.model_shape[0] is None


CASES = [
    Case("batched_2d", [None, 10], (3, 10)),
    Case("batched_3d", [None, 3, 4], (2, 3, 4)),
    Case("flat_2d", [1, 10], (1, 10)),
    Case("flat_3d", [2, 3, 4], (2, 3, 4)),
    Case("batched_int32", [None, 6], (2, 6), "INT32"),
]
_NUMPY = {"FP32": np.float32, "INT32": np.int32}
_ONNX = {"FP32": TensorProto.FLOAT, "INT32": TensorProto.INT32}
COUNTS = (1, 3, 30)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    repo = tmp_path_factory.mktemp("repo")
    for case in CASES:
        shape: list[int | str] = ["batch" if d is None else d for d in case.model_shape]
        config: dict[str, Any] = {"backend": "onnxruntime", "labels": LABELS}
        if case.batched:
            config["max_batch_size"] = 8
        else:
            config["max_batch_size"] = 0
        add_model(
            repo,
            case.model,
            config,
            lambda path, s=shape, c=case: onnx_models.identity(path, s, _ONNX[c.datatype]),
        )
    process = HubProcess(repository=repo, workdir=tmp_path_factory.mktemp("hub"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    folder = tmp_path_factory.mktemp("edge")
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    models = []
    for case in CASES:
        path = require(
            lambda c=case: build_identity_model(
                folder / f"{c.model}.tflite", c.model_shape, _NUMPY[c.datatype].__name__
            )
        )
        models.append({"name": case.model, "path": str(path), "labels": str(labels)})
    config = AgentConfig.model_validate(
        {
            "device_id": "agreement",
            "data_dir": str(folder / "data"),
            "api_address": "127.0.0.1:0",
            "metrics_address": None,
            "probe_models": False,
            "models": models,
        }
    )
    running = Agent(config)
    running.start()
    yield running
    running.stop(drain_timeout_s=1)


def _classify(host: str, port: int, case: Case, scores: np.ndarray, k: int) -> dict[str, Any]:
    body = {
        "inputs": [
            {
                "name": "x",
                "datatype": case.datatype,
                "shape": list(scores.shape),
                "data": scores.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "scores", "parameters": {"classification": k}}],
    }
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(
            "POST",
            f"/v2/models/{case.model}/infer",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200, answer
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"]) == ("scores", "BYTES")
    return {"shape": output["shape"], "data": output["data"]}


@pytest.mark.parametrize("case", CASES, ids=[c.model for c in CASES])
def test_hub_agent_and_triton_agree(hub: HubProcess, agent: Agent, case: Case) -> None:
    rng = np.random.default_rng(len(case.model))
    # Distinct values (Triton's sort is not stable), negative ones too, float32 exactly.
    values = rng.permutation(np.prod(case.request_shape)) - 7
    if case.datatype == "FP32":
        values = values / 8
    scores = values.astype(_NUMPY[case.datatype]).reshape(case.request_shape)
    hub_host, hub_port = hub.url.split(":")
    address = agent.api_address
    assert isinstance(address, TcpAddress)
    for k in COUNTS:
        shape, data = triton_classification(
            scores.ravel().tolist(),
            scores.shape,
            case.datatype,
            k,
            batched=case.batched,
            labels=LABELS,
        )
        expected = {"shape": shape, "data": data}
        from_hub = _classify(hub_host, int(hub_port), case, scores, k)
        from_agent = _classify("127.0.0.1", address.port, case, scores, k)
        assert from_hub == expected, f"hub, k={k}"
        assert from_agent == expected, f"agent, k={k}"


def test_the_reference_follows_tritons_documented_example() -> None:
    """Triton's documentation: for ``[1, 5, 10, 4]`` the top two classes are indices 2 and 1."""
    shape, data = triton_classification([1, 5, 10, 4], [4], "INT32", 2, batched=False)
    assert (shape, data) == ([2], ["10:2", "5:1"])
    shape, data = triton_classification([0.5, 0.25], [1, 2], "FP32", 1, batched=True)
    assert (shape, data) == ([1, 1], ["0.500000:0"])
    with pytest.raises(ValueError, match="unsupported type"):
        triton_classification([1, 0], [2], "BOOL", 1, batched=False)
