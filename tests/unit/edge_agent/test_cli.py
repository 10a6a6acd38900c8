from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from edge_agent.cli import main
from tests.support.models import DigitsModels


def _config(tmp_path: Path, **settings: object) -> Path:
    path = tmp_path / "agent.yaml"
    data = {"device_id": "cli-device", "data_dir": str(tmp_path / "data"), **settings}
    path.write_text(yaml.safe_dump(data))
    return path


def test_check_loads_every_model(
    tmp_path: Path, digits: DigitsModels, capsys: pytest.CaptureFixture[str]
) -> None:
    models = [{"name": k, "path": str(digits.model(k))} for k in ("fp32", "int8")]
    assert main(["check", "--config", str(_config(tmp_path, models=models))]) == 0
    out = capsys.readouterr().out
    assert "model fp32: ready" in out
    assert "model int8: ready" in out
    assert "check: ok" in out


def test_check_fails_on_a_broken_model(
    tmp_path: Path, digits: DigitsModels, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.tflite").write_bytes(b"junk")
    models = [
        {"name": "good", "path": str(digits.model("fp16"))},
        {"name": "bad", "path": "bad.tflite"},
    ]
    assert main(["check", "--config", str(_config(tmp_path, models=models))]) == 1
    out = capsys.readouterr().out
    assert "model good: ready" in out
    assert f"model bad: FAILED: {tmp_path / 'bad.tflite'}" in out
    assert "check: FAILED" in out


@pytest.mark.parametrize("command", ["check", "run"])
def test_an_invalid_config_exits_2_naming_the_setting(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, device_id="a#b")
    assert main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err
    assert "device_id" in err


def test_run_on_a_busy_port_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = _config(tmp_path, api_address=f"127.0.0.1:{port}", metrics_address="off")
        assert main(["run", "--config", str(path)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_config_file_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HYBRID_AGENT_CONFIG", str(_config(tmp_path)))
    monkeypatch.setenv("HYBRID_AGENT_DEVICE_CLASS", "from-env")
    assert main(["check"]) == 0
    assert "class from-env" in capsys.readouterr().out
