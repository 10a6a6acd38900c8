"""KServe's gRPC client (``kserve.InferenceGRPCClient``), unchanged, against a real hub."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support import onnx_models
from tests.support.broker import free_port
from tests.support.hub import HubProcess, add_model
from tests.support.kserve_env import kserve_python

pytestmark = pytest.mark.integration

CASES = Path(__file__).resolve().parents[1] / "support" / "kserve_grpc_cases.py"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    repo = tmp_path_factory.mktemp("repo")
    batching = {"max_queue_delay_us": 2000}
    add_model(
        repo,
        "add_sub",
        {"backend": "onnxruntime", "max_batch_size": 64, "dynamic_batching": batching},
        onnx_models.add_sub,
    )
    add_model(repo, "fp16", {"backend": "onnxruntime", "max_batch_size": 8}, onnx_models.scale)
    add_model(repo, "int64", {"backend": "onnxruntime", "max_batch_size": 8}, onnx_models.int64_add)
    add_model(repo, "strings", {"backend": "onnxruntime", "max_batch_size": 8}, onnx_models.strings)
    process = HubProcess(
        repository=repo, workdir=tmp_path_factory.mktemp("hub"), grpc_port=free_port()
    )
    process.start()
    yield process
    process.stop()


def test_kserve_grpc_client(hub: HubProcess) -> None:
    python = kserve_python()
    run = subprocess.run(
        [str(python), str(CASES), hub.grpc_url], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-4000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])

    assert got["live"]
    assert got["ready"]
    assert got["model_ready"]
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.full((3, 4), 0.5, np.float32)
    assert got["add_sub"]["id"] == "k-1"
    outputs = got["add_sub"]["outputs"]
    assert outputs["OUTPUT0"]["shape"] == [3, 4]
    assert outputs["OUTPUT0"]["datatype"] == "FP32"
    assert outputs["OUTPUT0"]["data"] == (a + b).reshape(-1).tolist()
    assert outputs["OUTPUT1"]["data"] == (a - b).reshape(-1).tolist()
    assert got["fp16"]["y"]["datatype"] == "FP16"
    assert got["fp16"]["y"]["data"] == [1.0, -2.5, 6.0]
    assert got["int64"]["sum"]["data"] == [2**41, -10, 14]
    assert got["int64"]["diff"]["data"] == [0, 0, 0]
    assert got["bytes"]["same"] == {
        "datatype": "BYTES",
        "shape": [1, 2],
        "data": ["héllo", "tensor"],
    }
    assert got["concurrent"] == {f"c-{i}": [2.0 * i] * 4 for i in range(32)}
    assert got["errors"]["unknown model"]["code"] == "NOT_FOUND"
    assert "no model named 'nope'" in got["errors"]["unknown model"]["details"]
    assert got["errors"]["wrong shape"]["code"] == "INVALID_ARGUMENT"
    assert "expects [-1, 4]" in got["errors"]["wrong shape"]["details"]
    assert got["after_errors"] == (a - b).reshape(-1).tolist()
