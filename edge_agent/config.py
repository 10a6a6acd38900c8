"""The agent's configuration: one typed object, validated when built, from YAML and environment.

Precedence: an ``HYBRID_AGENT_<FIELD>`` environment variable overrides the file's value; nested
fields use ``__`` (``HYBRID_AGENT_LIMITS__PAYLOAD_MAX_BYTES``); a value starting with ``[`` or
``{`` is read as YAML/JSON (``HYBRID_AGENT_MODELS='[{name: m, path: /m.tflite}]'``). Relative
paths are taken from the config file's folder (the working directory when there is no file), so
a config and its models can move together. An unknown ``HYBRID_AGENT_*`` variable is an error,
not a silent no-op.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from protocols import Limits, validate_device_id

from .addresses import TcpAddress, UnixAddress, parse_address
from .errors import ConfigError
from .runtime.base import RuntimeChoice

__all__ = [
    "CONFIG_FILE_ENV",
    "ENV_PREFIX",
    "AgentConfig",
    "ModelConfig",
    "RuntimeChoice",
    "load_config",
]

ENV_PREFIX = "HYBRID_AGENT_"
CONFIG_FILE_ENV = "HYBRID_AGENT_CONFIG"
"""Names the config file when ``--config`` is not given; not itself a setting."""
NESTED_DELIMITER = "__"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_DISABLED = {"", "none", "null", "off", "disabled"}

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    path = path.expanduser()
    if base is not None and not path.is_absolute():
        return Path(base) / path
    return path


class ModelConfig(BaseModel):
    """One local model: a ``.tflite`` file served under ``name``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    """The name in ``/v2/models/{name}``: letters, digits, ``_ . -``; at most 128 characters."""
    path: Path
    """The ``.tflite`` file (float32, float16 or int8)."""
    threads: int = Field(default=1, ge=1, le=64)
    """Threads each interpreter may use for one inference."""
    workers: int = Field(default=1, ge=1, le=64)
    """Interpreters of this model; that many requests run at once."""
    labels: Path | None = None
    """Text file, one class label per line, used by the classification extension."""
    version: str = Field(default="1", pattern=VERSION_PATTERN)
    """The version this model is served as (``/v2/models/{name}/versions/{version}``)."""

    @field_validator("path")
    @classmethod
    def _path(cls, value: Path, info: ValidationInfo) -> Path:
        if value.suffix != ".tflite":
            raise ValueError(f"model path must name a .tflite file, got {str(value)!r}")
        return _resolve(value, info)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)


class AgentConfig(BaseModel):
    """Everything ``edge-agent run`` needs; see docs/edge-agent.md for each field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    """This device's id: one MQTT topic level (no ``+ # /``, at most 64 characters)."""
    device_class: str = "generic"
    """The fleet this device belongs to; model announcements are per class."""
    data_dir: Path = Path("/var/lib/edge-agent")
    """Writable state (created if missing)."""
    api_address: str = "127.0.0.1:8081"
    """Local API: ``host:port`` or ``unix:/path/to.sock``."""
    metrics_address: str | None = "127.0.0.1:9101"
    """Prometheus endpoint (``host:port``); ``null``/``off`` disables it."""
    runtime: RuntimeChoice = "auto"
    """``auto`` picks the lightest interpreter installed: ai_edge_litert, tflite_runtime, tensorflow."""
    drain_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """On SIGTERM, how long in-flight requests may take to finish before the agent exits."""
    worker_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """How long a request waits for a free interpreter before a 503."""
    idle_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """A keep-alive connection idle this long is closed."""
    max_connections: int = Field(default=128, ge=1, le=10_000)
    """Open connections to the local API (each holds a thread); past it, new ones get 503."""
    probe_models: bool = True
    """Load each model once in a child process first, so a file that crashes the interpreter
    fails only its own model instead of the agent."""
    probe_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """How long that child may take to load and run a model once."""
    limits: Limits = Field(default_factory=Limits)
    """Size limits on request bodies (see ``protocols.Limits``); over ``payload_max_bytes`` is a 413."""
    log_level: LogLevel = "INFO"
    models: tuple[ModelConfig, ...] = ()

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        return validate_device_id(value)

    @field_validator("device_class")
    @classmethod
    def _device_class(cls, value: str) -> str:
        return validate_device_id(value, what="device class")

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @field_validator("api_address")
    @classmethod
    def _api_address(cls, value: str, info: ValidationInfo) -> str:
        address = _parse(value)
        if isinstance(address, UnixAddress):
            return str(UnixAddress(path=_resolve(address.path, info)))
        return value

    @field_validator("metrics_address", mode="before")
    @classmethod
    def _metrics_address(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in _DISABLED):
            return None
        if isinstance(value, str) and not isinstance(_parse(value), TcpAddress):
            raise ValueError("the metrics endpoint needs a TCP address (host:port)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _unique_models(self) -> AgentConfig:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} appears twice in models")
            seen.add(model.name)
        return self

    @property
    def api(self) -> TcpAddress | UnixAddress:
        return parse_address(self.api_address)

    @property
    def metrics(self) -> TcpAddress | None:
        if self.metrics_address is None:
            return None
        address = parse_address(self.metrics_address)
        assert isinstance(address, TcpAddress)  # checked by the validator
        return address


def _parse(value: str) -> TcpAddress | UnixAddress:
    try:
        return parse_address(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Build the config from ``path`` (YAML, optional) and ``HYBRID_AGENT_*`` variables.

    Raises :class:`ConfigError` with every problem found, each with where it is.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    base_dir = Path.cwd()
    source = "environment"
    if path is not None:
        data = _read_yaml(path)
        base_dir = path.resolve().parent
        source = f"{path} and environment"
    _merge(data, _env_overrides(environ))
    try:
        return AgentConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, found {type(data).__name__}")
    return data


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    known = set(AgentConfig.model_fields)
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX) or key == CONFIG_FILE_ENV:
            continue
        parts = key[len(ENV_PREFIX) :].lower().split(NESTED_DELIMITER)
        if parts[0] not in known or not all(parts):
            raise ConfigError(
                f"environment variable {key} names no setting; known: "
                + ", ".join(ENV_PREFIX + name.upper() for name in sorted(known))
            )
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _env_value(key, environ[key])
    return out


def _env_value(key: str, raw: str) -> Any:
    text = raw.strip()
    if text[:1] in ("[", "{"):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment variable {key} is not valid YAML/JSON: {exc}") from exc
    return raw


def _merge(target: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            _merge(current, value)
        else:
            target[key] = value


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        elif error["type"] == "missing":
            message = "required setting is missing"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)
