from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.addresses import TcpAddress, UnixAddress, parse_address
from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import ConfigError

MINIMAL = "device_id: dev-1\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_defaults_from_a_minimal_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), environ={})
    assert config.device_id == "dev-1"
    assert config.device_class == "generic"
    assert config.api == TcpAddress(host="127.0.0.1", port=8081)
    assert config.metrics == TcpAddress(host="127.0.0.1", port=9101)
    assert config.runtime == "auto"
    assert config.models == ()


def test_relative_paths_are_taken_from_the_config_files_folder(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        MINIMAL
        + "data_dir: state\napi_address: unix:run/api.sock\n"
        + "models:\n  - {name: m, path: models/m.tflite, labels: labels.txt, threads: 2}\n",
    )
    config = load_config(path, environ={})
    assert config.data_dir == tmp_path / "state"
    assert config.api == UnixAddress(path=tmp_path / "run" / "api.sock")
    (model,) = config.models
    assert model.path == tmp_path / "models" / "m.tflite"
    assert model.labels == tmp_path / "labels.txt"
    assert model.threads == 2
    assert model.workers == 1
    assert model.version == "1"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    environ = {
        "HYBRID_AGENT_DEVICE_ID": "007",
        "HYBRID_AGENT_METRICS_ADDRESS": "off",
        "HYBRID_AGENT_LIMITS__PAYLOAD_MAX_BYTES": "1000",
        "HYBRID_AGENT_DRAIN_TIMEOUT_S": "2.5",
        "HYBRID_AGENT_MODELS": '[{"name": "a", "path": "/m/a.tflite", "workers": 3}]',
        "HYBRID_AGENT_CONFIG": "ignored here",
        "OTHER": "x",
    }
    config = load_config(_write(tmp_path, MINIMAL + "device_class: pi4\n"), environ=environ)
    assert config.device_id == "007"  # a string, not the YAML integer 7
    assert config.device_class == "pi4"
    assert config.metrics is None
    assert config.limits.payload_max_bytes == 1000
    assert config.limits.header_max_bytes == 16 * 1024 * 1024
    assert config.drain_timeout_s == 2.5
    assert [(m.name, m.workers) for m in config.models] == [("a", 3)]


def test_config_from_the_environment_alone() -> None:
    config = load_config(None, environ={"HYBRID_AGENT_DEVICE_ID": "only-env"})
    assert config.device_id == "only-env"


@pytest.mark.parametrize(
    ("text", "environ", "fragments"),
    [
        ("device_id: a/b\n", {}, ["device_id", "'/'"]),
        ("device_id: ok\ndevice_class: 'x+y'\n", {}, ["device_class", "'+'"]),
        ("{}\n", {}, ["device_id: required setting is missing"]),
        (MINIMAL + "colour: red\n", {}, ["colour: unknown setting"]),
        (MINIMAL + "api_address: localhost\n", {}, ["api_address", "host:port"]),
        (MINIMAL + "api_address: '127.0.0.1:70000'\n", {}, ["port must be an integer"]),
        (MINIMAL + "metrics_address: unix:/m.sock\n", {}, ["metrics_address", "TCP"]),
        (MINIMAL + "runtime: onnx\n", {}, ["runtime"]),
        (MINIMAL + "models: [{name: m, path: m.onnx}]\n", {}, ["models.0.path", ".tflite"]),
        (MINIMAL + "models: [{name: m, path: m.tflite, threads: 0}]\n", {}, ["models.0.threads"]),
        (MINIMAL + "models: [{name: 'a b', path: m.tflite}]\n", {}, ["models.0.name"]),
        (
            MINIMAL + "models: [{name: m, path: a.tflite}, {name: m, path: b.tflite}]\n",
            {},
            ["'m' appears twice"],
        ),
        (MINIMAL + "limits: {payload_max_bytes: 0}\n", {}, ["payload_max_bytes"]),
        (MINIMAL, {"HYBRID_AGENT_DEVICEID": "x"}, ["HYBRID_AGENT_DEVICEID names no setting"]),
        (MINIMAL, {"HYBRID_AGENT_MODELS": "[{"}, ["HYBRID_AGENT_MODELS is not valid"]),
        ("- a\n- b\n", {}, ["must hold a mapping"]),
        ("device_id: [\n", {}, ["not valid YAML"]),
    ],
)
def test_invalid_configs_name_the_problem(
    tmp_path: Path, text: str, environ: dict[str, str], fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(_write(tmp_path, text), environ=environ)
    for fragment in fragments:
        assert fragment in str(excinfo.value)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_config_is_frozen() -> None:
    config = AgentConfig(device_id="d")
    with pytest.raises(ValueError, match="frozen"):
        config.device_id = "e"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8081", TcpAddress(host="127.0.0.1", port=8081)),
        ("[::1]:0", TcpAddress(host="::1", port=0)),
        ("unix:/run/a.sock", UnixAddress(path=Path("/run/a.sock"))),
        ("/run/b.sock", UnixAddress(path=Path("/run/b.sock"))),
    ],
)
def test_parse_address(text: str, expected: TcpAddress | UnixAddress) -> None:
    address = parse_address(text)
    assert address == expected
    assert parse_address(str(address)) == expected


@pytest.mark.parametrize("text", ["8081", ":8081", "::1:80", "[::1:80", "host:port", "unix:"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="address"):
        parse_address(text)
