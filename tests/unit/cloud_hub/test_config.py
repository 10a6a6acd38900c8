from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.auth import Authenticator, TokenBucket
from cloud_hub.errors import AuthenticationError, ConfigError, ModelNotFoundError, RateLimitedError
from cloud_hub.metrics import HubMetrics
from cloud_hub.model_config import ModelConfig, VersionPolicy, load_model_config
from cloud_hub.repository import ModelRepository
from cloud_hub.settings import AuthSettings, load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_model_config_defaults(tmp_path: Path) -> None:
    config = load_model_config(write(tmp_path / "config.yaml", "backend: onnxruntime\n"))
    assert config.max_batch_size == 0
    assert config.dynamic_batching is None
    assert config.version_policy.select([1, 3, 2]) == [3]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "backend: pytorch\n",
            "backend: Input should be 'onnxruntime', 'tflite', 'tensorrt' or 'quantum'",
        ),
        (
            "backend: onnxruntime\ndynamic_batching: {}\n",
            "dynamic_batching needs max_batch_size > 0",
        ),
        (
            "backend: onnxruntime\nmax_batch_size: 4\ndynamic_batching: {preferred_batch_sizes: [8]}\n",
            "preferred_batch_sizes [8] exceed max_batch_size 4",
        ),
        (
            "backend: onnxruntime\nmax_batch_size: -1\n",
            "max_batch_size: Input should be greater than or equal to 0",
        ),
        (
            "backend: onnxruntime\nversion_policy: {latest: 2, all: true}\n",
            "choose one of latest, all or specific",
        ),
        ("backend: onnxruntime\nbatch: 3\n", "batch: Extra inputs are not permitted"),
        ("- a list\n", "expected a mapping"),
        ("backend: [unclosed\n", "cannot read"),
    ],
)
def test_bad_model_config_names_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_model_config(write(tmp_path / "config.yaml", text))
    assert fragment in info.value.message


def test_version_policies() -> None:
    assert VersionPolicy(latest=2).select([1, 5, 3]) == [3, 5]
    assert VersionPolicy(all=True).select([2, 1]) == [1, 2]
    assert VersionPolicy(specific=[1, 9]).select([1, 2, 3]) == [1]
    assert ModelConfig(backend="tflite").version_policy.select([4]) == [4]


def test_settings_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path / "hub.yaml", f"model_repository: {tmp_path}\nport: 9000\nhost: 127.0.0.1\n"
    )
    monkeypatch.setenv("HYBRID_HUB_PORT", "9100")
    monkeypatch.setenv("HYBRID_HUB_LIMITS__TENSORS_MAX", "7")
    settings = load_settings(config)
    assert settings.port == 9100  # the environment beats the file
    assert settings.limits.to_limits().tensors_max == 7
    assert load_settings(config, port=9200).port == 9200  # flags beat both
    assert settings.loopback_only


def test_settings_errors_list_every_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, model_repository=tmp_path / "missing", port=99999)
    assert "model_repository: Value error, " in info.value.message
    assert "missing is not a directory" in info.value.message
    assert "port: Input should be less than or equal to 65535" in info.value.message
    with pytest.raises(ConfigError, match=r"config file .* does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_grpc_port_and_tls_settings(tmp_path: Path) -> None:
    assert load_settings(None, model_repository=tmp_path).grpc_port == 8001
    assert load_settings(None, model_repository=tmp_path, grpc_port=0).grpc_port == 0
    assert load_settings(None, model_repository=tmp_path).grpc_window_bytes == 1 << 20
    assert (
        load_settings(None, model_repository=tmp_path, grpc_window_bytes=0).grpc_window_bytes == 0
    )
    with pytest.raises(ConfigError, match=r"grpc_window_bytes: .*at least 65535"):
        load_settings(None, model_repository=tmp_path, grpc_window_bytes=1024)
    with pytest.raises(ConfigError, match=r"tls.cert_file .*cert.pem does not exist"):
        load_settings(
            None,
            model_repository=tmp_path,
            tls={"cert_file": tmp_path / "cert.pem", "key_file": tmp_path / "key.pem"},
        )


@pytest.mark.parametrize(
    ("jwt", "fragment"),
    [
        ({"secret": "s" * 32}, "set jwt.audience"),
        ({"secret": "s" * 32, "audience": "hub"}, "set jwt.issuer"),
        ({"secret": "s" * 32, "issuer": "idp"}, "set jwt.audience"),
    ],
)
def test_jwt_needs_audience_and_issuer(tmp_path: Path, jwt: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(None, model_repository=tmp_path, auth={"jwt": jwt})


def test_jwt_audience_and_issuer_checks_may_be_turned_off(tmp_path: Path) -> None:
    import time

    import jwt

    secret = "s" * 32
    settings = load_settings(
        None,
        model_repository=tmp_path,
        auth={"jwt": {"secret": secret, "require_audience": False, "require_issuer": False}},
    )
    auth = Authenticator(settings.auth)
    token = jwt.encode(
        {"scope": "infer", "aud": "anything", "iss": "anyone", "exp": int(time.time() + 60)},
        secret,
        algorithm="HS256",
    )
    assert auth.authenticate({"authorization": f"Bearer {token}"}).scopes == {"infer"}


def test_token_bucket() -> None:
    bucket = TokenBucket(rate_per_s=2, burst=2, updated_s=0.0)
    assert bucket.take(0.0) is None
    assert bucket.take(0.0) is None
    wait = bucket.take(0.0)
    assert wait == pytest.approx(0.5)
    assert bucket.take(0.5) is None


def test_api_keys_are_compared_by_digest_and_rate_limited() -> None:
    auth = Authenticator(
        AuthSettings.model_validate(
            {
                "api_keys": [
                    {
                        "name": "a",
                        "key": "k" * 20,
                        "scopes": ["infer"],
                        "rate_limit_per_s": 1,
                        "burst": 1,
                    }
                ]
            }
        )
    )
    principal = auth.authenticate({"authorization": "Bearer " + "k" * 20})
    assert principal.name == "a"
    assert auth.authenticate({"x-api-key": "k" * 20}) == principal
    auth.rate_limit(principal)
    with pytest.raises(RateLimitedError) as info:
        auth.rate_limit(principal)
    assert info.value.retry_after_s > 0
    with pytest.raises(AuthenticationError, match="invalid API key"):
        auth.authenticate({"authorization": "Bearer nope"})
    with pytest.raises(AuthenticationError, match="missing credentials"):
        auth.authenticate({"authorization": "Basic abc"})


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", "", "x" * 200, "sub/.."])
def test_repository_refuses_names_outside_it(tmp_path: Path, name: str) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "config.yaml").write_text("backend: onnxruntime\n")  # a model folder one level up
    repo = ModelRepository(tmp_path / "repo", HubMetrics())
    with pytest.raises(ModelNotFoundError):
        repo.folder(name)


def test_repository_follows_no_symlink_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.yaml").write_text("backend: onnxruntime\n")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "escape").symlink_to(outside)
    repo = ModelRepository(tmp_path / "repo", HubMetrics())
    with pytest.raises(ModelNotFoundError):
        repo.folder("escape")
    assert repo.discover() == []


def test_batch_limit_from_fixed_shape_ranges() -> None:
    from cloud_hub.backends.tensorrt import ShapeRange
    from cloud_hub.repository import _check_batch_limit

    class Profiled:
        def __init__(self) -> None:
            self.shape_ranges = {"x": ShapeRange(min=(1, 3), opt=(4, 3), max=(8, 3))}

    _check_batch_limit(Profiled(), ModelConfig(backend="tensorrt", max_batch_size=8))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_batch_size 16 is larger than the 8"):
        _check_batch_limit(Profiled(), ModelConfig(backend="tensorrt", max_batch_size=16))  # type: ignore[arg-type]
