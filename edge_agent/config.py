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
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from protocols import MODEL_NAME_PATTERN, VERSION_PATTERN, Limits, validate_device_id

from .addresses import TcpAddress, UnixAddress, parse_address
from .errors import ConfigError
from .runtime.base import RuntimeChoice

__all__ = [
    "CONFIG_FILE_ENV",
    "ENV_PREFIX",
    "AgentConfig",
    "BreakerConfig",
    "CloudConfig",
    "ConfidenceRule",
    "FallbackConfig",
    "FallbackPolicy",
    "ModelConfig",
    "OnCloudUnavailable",
    "OutboxConfig",
    "RemoteModelConfig",
    "RuntimeChoice",
    "UpdatesConfig",
    "load_config",
]

ENV_PREFIX = "HYBRID_AGENT_"
CONFIG_FILE_ENV = "HYBRID_AGENT_CONFIG"
"""Names the config file when ``--config`` is not given; not itself a setting."""
NESTED_DELIMITER = "__"
_DISABLED = {"", "none", "null", "off", "disabled"}

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
FallbackPolicy = Literal["never", "always", "on_low_confidence", "on_missing"]
ConfidenceRule = Literal["max_probability", "entropy"]
OnCloudUnavailable = Literal["local", "error", "queue"]


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    path = path.expanduser()
    if base is not None and not path.is_absolute():
        return Path(base) / path
    return path


class FallbackConfig(BaseModel):
    """When a local model's requests go to the cloud, and what happens when the cloud is away.

    ``policy``: ``never`` (the default: edge only), ``always``, ``on_low_confidence`` (run here,
    hand over when the answer's confidence is under ``threshold``), ``on_missing`` (only when the
    model is not serving here: missing file, failed or still loading). Every policy but ``never``
    also hands over a model that is not serving here, and, with ``latency_budget_s``, a request
    that would wait longer than that for a local worker.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: FallbackPolicy = "never"
    cloud_model: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)
    """The hub's model for this one; defaults to the same name."""
    cloud_version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    """The hub's version; defaults to whatever the hub serves."""
    confidence: ConfidenceRule = "max_probability"
    """``max_probability``: the top class's probability; ``entropy``: 1 - H(p)/ln(classes),
    KubeEdge Sedna's CrossEntropy hard-example score. Both are in [0, 1]; under ``threshold``
    the request goes to the cloud."""
    threshold: float = Field(default=0.8, gt=0, le=1)
    confidence_output: str | None = None
    """The output holding class scores; defaults to the model's first output."""
    softmax: bool | None = None
    """Apply a softmax to the scores first: ``true``, ``false``, or unset to apply it only to rows
    that are not already probabilities."""
    latency_budget_s: float | None = Field(default=None, gt=0, le=3600)
    """Hand over a request whose expected local wait plus run time is over this budget."""
    deadline_s: float = Field(default=5.0, gt=0, le=3600)
    """How long a request may take in the cloud, retries included (also its Message Expiry)."""
    on_cloud_unavailable: OnCloudUnavailable = "local"
    """``local``: answer here, marked degraded; ``error``: fail (503, at once while the breaker
    is open; 504 after a deadline); ``queue``: keep it in the outbox, answer 202 with the id."""


class RemoteModelConfig(BaseModel):
    """A model that is not on the device: its requests go to the cloud model it maps to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    """The name apps use (``/v2/models/{name}/infer``)."""
    cloud_model: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)
    """The hub's model; defaults to ``name``."""
    cloud_version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    deadline_s: float = Field(default=5.0, gt=0, le=3600)
    on_cloud_unavailable: Literal["error", "queue"] = "error"
    """Nothing can answer here, so ``local`` is not an option."""
    batched: bool = True
    """The cloud model's first dimension is the batch, as its ``max_batch_size > 0`` says (set
    ``false`` for a model with ``max_batch_size: 0``). Only the classification extension uses it:
    it ranks each batch entry on its own, or the whole output when there is no batch."""


class BreakerConfig(BaseModel):
    """The circuit breaker on the cloud link."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failures: int = Field(default=5, ge=1, le=10_000)
    """Consecutive failed cloud requests (timeouts) that open the breaker."""
    cooldown_s: float = Field(default=10.0, gt=0, le=3600)
    """How long it stays open before letting probe requests through (half-open)."""
    half_open_probes: int = Field(default=1, ge=1, le=1000)
    """Requests let through at once while half-open; one success closes it, a failure reopens it."""


class OutboxConfig(BaseModel):
    """The on-disk outbox (SQLite in ``data_dir``) for queued requests, their answers and telemetry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_requests: int = Field(default=10_000, ge=1, le=10_000_000)
    """Queued requests and answers not yet expired; past it, new requests get 503."""
    max_telemetry: int = Field(default=1_000, ge=1, le=10_000_000)
    """Telemetry messages waiting; past it, the oldest is dropped."""
    ttl_s: float = Field(default=86_400.0, gt=0)
    """A queued request not answered within this is dropped (and counted)."""
    answer_ttl_s: float = Field(default=3_600.0, gt=0)
    """An answer is kept this long for the app to fetch, then dropped."""
    max_failures: int = Field(default=5, ge=1, le=1000)
    """A request the link fails to send this many times (not a timeout: an error with this
    message itself) moves to the dead-letter state: not sent again, reported by
    ``GET /v2/requests/{id}`` and counted, kept for ``answer_ttl_s``."""
    synchronous: Literal["full", "normal"] = "full"
    """SQLite ``synchronous``: ``full`` survives power loss; ``normal`` survives a killed agent
    (not a power cut) and writes faster."""


class CloudConfig(BaseModel):
    """The cloud link: MQTT 5 to the broker the hubs listen on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: str
    """``host:port`` of the MQTT broker."""
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    """Defaults to ``edge-{device_id}``; must stay the same across restarts (persistent session)."""
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT 5, or 3.1.1 for brokers without it: no Response Topic, Correlation Data or Message
    Expiry then; answers come on the default reply topic and are matched by request id."""
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=3600, ge=0, le=4_294_967_295)
    """How long the broker keeps this device's session (subscription, answers) while it is away."""
    reconnect_min_s: float = Field(default=0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    max_in_flight: int = Field(default=256, ge=1, le=65_535)
    """Cloud requests awaiting an answer at once; more wait for a slot (or count as unavailable)."""
    retry_interval_s: float = Field(default=1.0, gt=0, le=3600)
    """A request not answered within this is sent again with the same id."""
    silent_wait_s: float | None = Field(default=None, gt=0, le=3600)
    """When set: once requests have waited this long with no answer from the cloud (it has just
    gone silent), new requests wait at most this long instead of their ``deadline_s`` before
    the policy answers locally (or queues, or fails)."""
    payload_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    """The largest request sent to the cloud, as an MQTT message (tensors travel binary);
    larger ones get 413. Keep it at or under the hub's ``limits.payload_max_bytes`` and the
    broker's ``message_size_limit``."""
    telemetry_interval_s: float = Field(default=60.0, ge=0, le=86_400)
    """Telemetry period; 0 disables it."""
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    remote_models: tuple[RemoteModelConfig, ...] = ()
    """Models not on the device, answered by the cloud (``fallback_reason: missing``)."""

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        if not isinstance(_parse(value), TcpAddress):
            raise ValueError("the broker needs a TCP address (host:port)")
        return value

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _files(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _checks(self) -> CloudConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        seen: set[str] = set()
        for model in self.remote_models:
            if model.name in seen:
                raise ValueError(f"remote model {model.name!r} appears twice")
            seen.add(model.name)
        return self

    @property
    def address(self) -> TcpAddress:
        address = parse_address(self.broker)
        assert isinstance(address, TcpAddress)  # checked by the validator
        return address


class UpdatesConfig(BaseModel):
    """Signed model updates: announcements on the device class's fleet topic (through the cloud
    link), downloads from a hub. See docs/updates.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hub_url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    """Where artifacts are downloaded from: ``http(s)://host:port``."""
    api_key: SecretStr | None = None
    """Sent as ``Authorization: Bearer`` (the ``infer`` scope suffices)."""
    trusted_keys: tuple[str, ...] = Field(min_length=1)
    """Ed25519 public keys: base64 of the raw key (``model-convert keygen`` prints it) or PEM
    files. Only distinct keys count towards ``threshold``."""
    threshold: int = Field(default=1, ge=1, le=16)
    """Valid signatures by distinct trusted keys a release needs."""
    max_size_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    """Largest model this device takes, whatever a release says."""
    health_window_s: float = Field(default=30.0, ge=0, le=86_400)
    """How long a new version is watched after the swap; 0 skips the watch."""
    health_interval_s: float = Field(default=1.0, gt=0, le=3600)
    """How often the smoke samples run again during the window."""
    latency_budget_ms: float | None = Field(default=None, gt=0)
    """Median run time a new version must keep in its window, when its release sets none."""
    download_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    download_chunk_bytes: int = Field(default=64 * 1024, ge=1024, le=64 * 1024 * 1024)
    retry_s: float = Field(default=30.0, gt=0, le=86_400)
    """After a failed download, when to try the newest announcement again."""

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        base = (info.context or {}).get("base_dir")
        resolved = []
        for entry in value:
            path = Path(entry).expanduser()
            if base is not None and (entry.endswith(".pub") or entry.endswith(".pem")):
                path = path if path.is_absolute() else Path(base) / path
                resolved.append(str(path))
            else:
                resolved.append(entry)
        return tuple(resolved)


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
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    """When its requests go to the cloud (``never`` unless set)."""

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
    """Open connections to the local API (each holds a thread). When all are taken, the one
    waiting longest on its client is closed for a new one; 503 only when all run requests."""
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """A request's line and headers must arrive within this of its first byte (else 408)."""
    body_min_bytes_per_s: int = Field(default=256 * 1024, ge=1)
    """A body must arrive within ``header_timeout_s`` plus its length at this rate (else 408)."""
    probe_models: bool = True
    """Load each model once in a child process first, so a file that crashes the interpreter
    fails only its own model instead of the agent."""
    probe_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """How long that child may take to load and run a model once."""
    limits: Limits = Field(default_factory=Limits)
    """Size limits on request bodies (see ``protocols.Limits``); over ``payload_max_bytes`` is a 413."""
    log_level: LogLevel = "INFO"
    models: tuple[ModelConfig, ...] = ()
    cloud: CloudConfig | None = None
    """The cloud link (MQTT); without it every request is answered here."""
    updates: UpdatesConfig | None = None
    """Signed model updates over the cloud link; without it models change only by config."""
    capture_opt_out: bool = False
    """Mark every request handed to the cloud ``capture: false``: the hub never keeps it for
    training (docs/capture.md)."""

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
        if self.updates is not None and self.cloud is None:
            raise ValueError("updates come over the cloud link: add a cloud section (cloud.broker)")
        if self.cloud is None:
            using = [m.name for m in self.models if m.fallback.policy != "never"]
            if using:
                raise ValueError(
                    f"model(s) {', '.join(map(repr, using))} fall back to the cloud, but there is "
                    "no cloud section (cloud.broker)"
                )
        else:
            clash = [m.name for m in self.cloud.remote_models if m.name in seen]
            if clash:
                raise ValueError(
                    f"cloud.remote_models names local model(s) {', '.join(map(repr, clash))}; "
                    "use the local model's fallback section instead"
                )
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
