from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_hub.backends.base import BackendOptions, load_backend_class
from cloud_hub.backends.onnxruntime import OnnxRuntimeBackend, choose_providers
from cloud_hub.errors import BackendUnavailableError, BadRequestError, ConfigError, ModelLoadError
from protocols import Datatype
from tests.support import onnx_models

CPU = ["CPUExecutionProvider"]
GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_providers_follow_the_device_setting() -> None:
    assert choose_providers(CPU, BackendOptions()) == CPU
    assert choose_providers(GPU, BackendOptions()) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(GPU, BackendOptions(parameters={"tensorrt_provider": True})) == GPU
    assert choose_providers(GPU, BackendOptions(device="cpu")) == CPU
    with pytest.raises(BackendUnavailableError, match="no GPU execution provider"):
        choose_providers(CPU, BackendOptions(device="gpu"))


def test_loads_and_describes_a_model(tmp_path: Path) -> None:
    backend = OnnxRuntimeBackend.load(
        onnx_models.add_sub(tmp_path / "m.onnx"), BackendOptions(intra_op_threads=1)
    )
    assert [(s.name, s.datatype, s.shape) for s in backend.inputs] == [
        ("INPUT0", Datatype.FP32, (-1, 4)),
        ("INPUT1", Datatype.FP32, (-1, 4)),
    ]
    a = np.ones((2, 4), np.float32)
    out = backend.infer({"INPUT0": a, "INPUT1": a})
    assert out["OUTPUT0"].tolist() == (a + a).tolist()
    assert backend.name == "onnxruntime:CPUExecutionProvider"


def test_string_tensors_need_utf8(tmp_path: Path) -> None:
    backend = OnnxRuntimeBackend.load(onnx_models.strings(tmp_path / "s.onnx"), BackendOptions())
    text = np.array([[b"caf\xc3\xa9"]], dtype=object)
    assert backend.infer({"text": text})["same"].tolist() == [[b"caf\xc3\xa9"]]
    with pytest.raises(BadRequestError, match="take UTF-8 text"):
        backend.infer({"text": np.array([[b"\xff"]], dtype=object)})


def test_a_corrupt_file_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match=r"bad\.onnx: ONNX Runtime cannot load it"):
        OnnxRuntimeBackend.load(path, BackendOptions())


def test_backends_are_found_by_name() -> None:
    assert load_backend_class("onnxruntime") is OnnxRuntimeBackend
    with pytest.raises(ConfigError, match="unknown backend 'torch'"):
        load_backend_class("torch")
