"""Hub settings: defaults < a YAML file (``--config``) < ``HYBRID_HUB_*`` variables < flags.

Nested fields use ``__`` in variable names: ``HYBRID_HUB_LIMITS__PAYLOAD_MAX_BYTES=1048576``.
Everything is validated when the settings are built, so a bad value stops the hub at start with a
message that names the field.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from protocols import Limits

from .errors import ConfigError

__all__ = [
    "ApiKey",
    "AuthSettings",
    "ConversionSettings",
    "HubSettings",
    "JwtSettings",
    "LimitsSettings",
    "StoreSettings",
    "load_settings",
]

Scope = Literal["infer", "admin"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKey(_Section):
    name: Annotated[str, Field(min_length=1)]
    """Who holds the key; it labels logs and rate limits, never the key itself."""
    key: SecretStr
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["infer"]))
    rate_limit_per_s: Annotated[float, Field(gt=0)] | None = None
    """Sustained requests per second; ``None`` for no limit."""
    burst: Annotated[int, Field(ge=1)] | None = None
    """Requests allowed at once above the rate; defaults to one second's worth."""

    @model_validator(mode="after")
    def _long_enough(self) -> ApiKey:
        if len(self.key.get_secret_value()) < 16:
            raise ValueError(f"API key {self.name!r} is shorter than 16 characters")
        return self


class JwtSettings(_Section):
    """Bearer tokens signed by an identity provider; scopes from a claim."""

    secret: SecretStr | None = None
    """Shared secret for HS256/384/512."""
    public_key_file: Path | None = None
    """PEM public key for RS*/ES*/EdDSA."""
    algorithms: list[str] = Field(default_factory=lambda: ["HS256"])
    audience: str | None = None
    """The ``aud`` a token must carry; required unless ``require_audience`` is false."""
    issuer: str | None = None
    """The ``iss`` a token must carry; required unless ``require_issuer`` is false."""
    require_audience: bool = True
    """Turn off only where the identity provider issues tokens for this hub alone."""
    require_issuer: bool = True
    scope_claim: str = "scope"
    """A space-separated string or a list of scopes."""
    rate_limit_per_s: Annotated[float, Field(gt=0)] | None = None
    burst: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _one_key(self) -> JwtSettings:
        if (self.secret is None) == (self.public_key_file is None):
            raise ValueError("set exactly one of jwt.secret and jwt.public_key_file")
        if self.public_key_file is not None and not self.public_key_file.is_file():
            raise ValueError(f"jwt.public_key_file {self.public_key_file} does not exist")
        # A token minted for another service of the same identity provider must not pass here.
        if self.require_audience and not self.audience:
            raise ValueError("set jwt.audience (or jwt.require_audience: false to accept any)")
        if self.require_issuer and not self.issuer:
            raise ValueError("set jwt.issuer (or jwt.require_issuer: false to accept any)")
        return self


class AuthSettings(_Section):
    api_keys: list[ApiKey] = Field(default_factory=list)
    jwt: JwtSettings | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys) or self.jwt is not None


class LimitsSettings(_Section):
    """The wire limits (see docs/protocol.md); the body limit is ``payload_max_bytes``."""

    payload_max_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    header_max_bytes: Annotated[int, Field(gt=0)] = 16 * 1024 * 1024
    tensor_max_elements: Annotated[int, Field(gt=0)] = 1 << 26
    tensor_max_dims: Annotated[int, Field(gt=0)] = 16
    bytes_element_max_bytes: Annotated[int, Field(gt=0)] = 16 * 1024 * 1024
    tensors_max: Annotated[int, Field(gt=0)] = 256

    def to_limits(self) -> Limits:
        return Limits(**self.model_dump())


class TlsSettings(_Section):
    """TLS on the HTTP and gRPC listeners; with ``client_ca_file``, mutual TLS.

    Renewed files are picked up while serving (:mod:`cloud_hub.tls`): new connections get them,
    open ones keep what they had.
    """

    cert_file: Path
    """PEM certificate chain the listeners present, leaf first."""
    key_file: Path
    """PEM private key of ``cert_file``."""
    client_ca_file: Path | None = None
    """PEM CA bundle; when set, every client must present a certificate it signed."""
    reload_check_s: Annotated[float, Field(ge=0)] = 5.0
    """How often, at most, a new connection looks whether the files changed; 0: never."""

    @model_validator(mode="after")
    def _files(self) -> TlsSettings:
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"tls.{name} {path} does not exist")
        return self


class MqttSettings(_Section):
    """The MQTT bridge: where the broker is and how the hub shares the device requests."""

    broker: Annotated[str, Field(pattern=r"^[^:\s]+:\d{1,5}$")]
    """``HOST:PORT``."""
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str | None = None
    """Defaults to ``hub-<hostname>-<pid>``."""
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT 5, or 3.1.1 for brokers without it (set ``shared: false`` where the broker has no
    shared subscriptions); 3.1.1 drops Response Topic, Correlation Data, expiry and flow control."""
    shared: bool = True
    """Subscribe through ``$share/<share_group>/...`` so replicas split the requests."""
    share_group: str = "hybrid-hub"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    max_in_flight: Annotated[int, Field(ge=1, le=65535)] = 256
    """MQTT 5 Receive Maximum: requests the broker may hand over before the hub answers."""
    dedup_ttl_s: Annotated[float, Field(gt=0)] = 600.0
    """How long final answers are kept to answer a repeated request (same device, id and
    payload digest) without running it again."""
    dedup_max_bytes: Annotated[int, Field(ge=0)] = 64 * 1024 * 1024
    """Memory of that record: answers plus about 500 bytes per entry; the oldest go first.
    Size it as repeats per second you must absorb x ``dedup_ttl_s`` x (answer bytes + 500)."""
    dedup_max_entries: Annotated[int, Field(ge=1)] = 1_000_000
    device_rate_per_s: Annotated[float, Field(gt=0)] | None = 200.0
    """Requests per second one device may send, sustained (a token bucket per device);
    ``None`` for no limit. Over it a request is answered 429 with ``retry_after_s``."""
    device_burst: Annotated[int, Field(ge=1)] = 400
    """Requests one device may send at once above its rate."""
    max_running: Annotated[int, Field(ge=1)] = 128
    """Requests handed to the models at once; the others wait in one queue per device, and a
    freed place goes to the next device in turn."""
    device_max_waiting: Annotated[int, Field(ge=1)] = 64
    """Requests of one device that may wait for a place; past it, 429 with ``retry_after_s``."""
    reconnect_min_s: Annotated[int, Field(ge=1)] = 1
    reconnect_max_s: Annotated[int, Field(ge=1)] = 30

    @model_validator(mode="after")
    def _files(self) -> MqttSettings:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"mqtt.{name} {path} does not exist")
        if not 0 < int(self.broker.rsplit(":", 1)[1]) < 65536:
            raise ValueError(f"mqtt.broker {self.broker!r} has no valid port")
        return self

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.broker.rpartition(":")
        return host, int(port)


class StoreSettings(_Section):
    """The shared store (docs/hub.md, "State and replicas"): a folder, or an S3 bucket.

    Every replica of one hub must name the same store. Credentials for S3 may come from
    here (``HYBRID_HUB_STORE__ACCESS_KEY_ID``, ``..._SECRET_ACCESS_KEY``) or from boto3's usual
    chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, a pod's role)."""

    kind: Literal["filesystem", "s3"] = "filesystem"
    path: Path | None = None
    """The folder (``filesystem``); ``artifact_store``, then ``<model_repository>/.artifacts``,
    when unset. A shared volume (NFS, CephFS) for several replicas."""
    bucket: str | None = None
    prefix: str = ""
    """Keys go under ``<prefix>/``, so one bucket can hold several hubs."""
    endpoint_url: str | None = None
    """``http(s)://host:port`` of MinIO, Ceph RGW or another S3 API; unset for AWS S3."""
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """``path`` for MinIO and most self-hosted stores."""
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 10.0

    @model_validator(mode="after")
    def _complete(self) -> StoreSettings:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("store.kind s3 needs store.bucket")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both store.access_key_id and store.secret_access_key, or neither")
        return self


class ConversionSettings(_Section):
    """Conversion jobs (docs/converter.md): records and leases in the shared store."""

    workers: Annotated[int, Field(ge=0)] = 1
    """Jobs this replica runs at once; 0 takes none (it still accepts and reports them)."""
    max_pending: Annotated[int, Field(ge=1)] = 8
    """Jobs queued or running in the whole store; beyond that a submission gets 503."""
    lease_s: Annotated[float, Field(gt=0)] = 30.0
    """A job whose worker has not renewed its lease for this long is taken over by another
    replica. Renewed every third of it."""
    poll_s: Annotated[float, Field(gt=0)] = 5.0
    """How often each replica looks for queued jobs and expired leases."""
    work_dir: Path | None = None
    """Local scratch space for running jobs; the system's temporary folder when unset."""


class HubSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HYBRID_HUB_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    model_repository: Path
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 8001
    """The Open Inference Protocol over gRPC on this port of ``host``; 0 turns it off."""
    grpc_window_bytes: Annotated[int, Field(ge=0, le=2**31 - 1)] = 1 << 20
    """The HTTP/2 flow-control window each gRPC call receives into, fixed (as Go's and Java's
    gRPC servers do when given one); 0 lets gRPC size it from its bandwidth probes, which on
    loopback stalled one to three 600 KB requests in a hundred by 20 to 60 ms (so did a fixed
    4 MiB window; 1 MiB did not)."""
    tls: TlsSettings | None = None
    """Serve HTTP and gRPC over TLS (and mutual TLS with ``tls.client_ca_file``)."""
    load_models: Literal["all", "none"] | list[str] = "all"
    """Models loaded at start: every folder, none (load them through the API), or these."""
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    mqtt: MqttSettings | None = None
    """Serve device requests over MQTT too (``--mqtt-broker``)."""
    metrics_public: bool = True
    """Serve /metrics without credentials (Prometheus scrapers usually have none)."""
    graceful_shutdown_s: Annotated[float, Field(ge=0)] = 30.0
    """How long in-flight requests may take to finish after SIGTERM."""
    server_name: str = "hybrid-inference-hub"
    artifact_store: Path | None = None
    """The filesystem store's folder (``store.path`` takes precedence);
    ``<model_repository>/.artifacts`` when unset."""
    store: StoreSettings = Field(default_factory=StoreSettings)
    """Where artifacts, uploads, releases and conversion jobs live, shared by every replica."""
    conversions: ConversionSettings = Field(default_factory=ConversionSettings)
    announce_interval_s: Annotated[float, Field(gt=0)] = 60.0
    """How often each replica checks that the retained model announcements are the newest
    releases in the store, and publishes them again if not (another replica may have published
    an older view last)."""
    capture_store: Path | None = None
    """A folder for captured fallback requests (models opt in with ``capture:`` in their
    config.yaml); when unset, the shared store (``.capture/`` in ``store``), which every
    replica reads."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("grpc_window_bytes")
    @classmethod
    def _window_is_a_window(cls, value: int) -> int:
        if 0 < value < 65535:
            raise ValueError("must be 0 (sized by gRPC) or at least 65535, HTTP/2's default")
        return value

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @property
    def loopback_only(self) -> bool:
        """With no credentials configured, only loopback clients are served."""
        return not self.auth.enabled

    def host_is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def load_settings(config_file: Path | None = None, **overrides: Any) -> HubSettings:
    """Build settings from the layers; :class:`ConfigError` lists every bad field."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")

    class _Layered(HubSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return tuple(sources)

    try:
        return _Layered(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in e['loc']) or '(settings)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid hub settings:\n{problems}") from None
