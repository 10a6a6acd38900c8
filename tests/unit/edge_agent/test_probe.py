"""Probing a model in a child process, so a file that crashes the interpreter fails only itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import ModelLoadError
from edge_agent.probe import main, probe_model
from edge_agent.runtime import RuntimeInfo
from tests.support.models import DigitsModels


def test_a_good_model_passes(runtime: RuntimeInfo, digits: DigitsModels) -> None:
    probe_model(runtime.name, digits.model("int8"), threads=1, timeout_s=60)


def test_a_corrupt_model_with_a_valid_identifier_is_reported(
    runtime: RuntimeInfo, tmp_path: Path
) -> None:
    # tflite-runtime 2.14 segfaults on this file; LiteRT refuses it. Either way: a clean error.
    path = tmp_path / "crash.tflite"
    path.write_bytes(b"TFL3" * 10)
    with pytest.raises(ModelLoadError) as excinfo:
        probe_model(runtime.name, path, threads=1, timeout_s=60)
    message = str(excinfo.value)
    assert str(path) in message
    assert "crashed the" in message or "is not a model" in message


def test_a_missing_model_reports_the_childs_error(runtime: RuntimeInfo, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        probe_model(runtime.name, tmp_path / "absent.tflite", threads=1, timeout_s=60)


def test_the_child_refuses_an_unknown_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["onnxruntime", "/m.tflite", "1"]) == 2
    assert "unknown runtime 'onnxruntime'" in capsys.readouterr().err
