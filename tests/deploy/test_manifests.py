"""deploy/ as shipped: Dockerfiles, compose, Kubernetes manifests, Prometheus rules and the
Grafana dashboard, checked against the code they deploy. No docker daemon or cluster here, so
the files are parsed and every value that must agree with the code is compared with what the
code says (settings defaults, routes, console scripts), not with literals.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import tomllib
import yaml
from fastapi.testclient import TestClient

from cloud_hub.app import create_app
from cloud_hub.settings import HubSettings, load_settings
from edge_agent.api.routes import Endpoint, match_route
from edge_agent.config import AgentConfig, load_config
from tests.deploy import kustomize, promql
from tests.support.secure_broker import MAKE_CREDENTIALS, Credentials, make_credentials

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _hub_port() -> int:
    return int(HubSettings.model_fields["port"].default)


def _agent_port(field: str) -> int:
    return int(str(AgentConfig.model_fields[field].default).rsplit(":", 1)[1])


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("HYBRID_HUB_", "HYBRID_AGENT_")):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """What the shipped script writes for compose's one device."""
    return make_credentials(
        tmp_path_factory.mktemp("creds") / "dev-credentials", {"edge-1": "generic"}
    )


@pytest.fixture(scope="module")
def hub_routes_ok(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``ok(path)``: the real hub app answers ``GET path`` with something other than 404."""
    repo = tmp_path_factory.mktemp("empty-repo")
    app = create_app(load_settings(None, model_repository=repo))
    with TestClient(app) as client:
        yield lambda path: client.get(path).status_code != 404


def _agent_route(path: str) -> Endpoint:
    return match_route("GET", path).endpoint


# -- Dockerfiles ------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _args(value: str) -> list[str]:
    return json.loads(value) if value.startswith("[") else shlex.split(value)


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions per stage; ARG defaults before the first FROM substituted into FROM."""
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _instructions(path):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            stages.append([(keyword, re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest))])
        else:
            stages[-1].append((keyword, rest))
    return stages


DOCKERFILES = {
    "Dockerfile.edge": "edge-agent",
    "Dockerfile.hub": "cloud-hub",
    "Dockerfile.hub-gpu": "cloud-hub",
}


@pytest.mark.parametrize(("name", "script"), DOCKERFILES.items())
def test_dockerfile_is_pinned_non_root_healthy_and_runs_a_real_entry_point(
    name: str, script: str, hub_routes_ok: Any
) -> None:
    path = DEPLOY / "docker" / name
    stages = _stages(path)
    names = set()
    for stage in stages:
        image, _, alias = stage[0][1].partition(" AS ")
        if image not in names:
            repo, _, tag = image.rpartition(":")
            assert repo, f"{name}: base image {image} has no tag"
            assert tag != "latest", f"{name}: {image} floats"
            assert re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"
        names.add(alias.strip())
    for stage in stages:
        for keyword, rest in stage:
            if keyword == "COPY" and "--from=" not in rest:
                *sources, _ = _args(rest)
                for source in sources:
                    assert (ROOT / source).exists(), f"{name}: COPY {source}: no such path"
    final = dict[str, str]()
    env: dict[str, str] = {}
    for keyword, rest in stages[-1]:
        final[keyword] = rest
        if keyword == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    user = final["USER"].split(":")[0]
    assert user.isdigit(), f"{name}: USER {user} should be numeric (runAsNonRoot checks it)"
    assert int(user) != 0
    entry = _args(final["ENTRYPOINT"])
    assert script in entry
    assert script in SCRIPTS
    health = final["HEALTHCHECK"]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", health)
    assert url is not None, health
    port, route = int(url.group(1)), url.group(2)
    if script == "cloud-hub":
        assert hub_routes_ok(route)
        assert port == int(env.get("HYBRID_HUB_PORT", _hub_port()))
        settings_env = {k: v for k, v in env.items() if k.startswith("HYBRID_HUB_")}
        assert settings_env, "the hub image sets its container settings"
    else:
        assert _agent_route(route) in (Endpoint.READY, Endpoint.LIVE)
        assert port == int(env["HYBRID_AGENT_API_ADDRESS"].rsplit(":", 1)[1])
        assert port == _agent_port("api_address")
        assert int(env["HYBRID_AGENT_METRICS_ADDRESS"].rsplit(":", 1)[1]) == _agent_port(
            "metrics_address"
        )
    exposed = {int(p) for p in final["EXPOSE"].split()}
    assert port in exposed
    if name == "Dockerfile.hub-gpu":
        assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d+\.\d+-py3", stages[0][0][1])
        assert "gpu" in next(r for k, r in stages[-1] if k == "RUN" and "pip install" in r)


def test_the_images_settings_are_valid_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every HYBRID_* variable an image sets names a real setting with a valid value."""
    for name in ("Dockerfile.hub", "Dockerfile.hub-gpu"):
        env = _image_env(name)
        repo = Path(env.pop("HYBRID_HUB_MODEL_REPOSITORY"))
        assert repo.is_absolute()
        (tmp_path / "models").mkdir(exist_ok=True)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        hub = load_settings(None, model_repository=tmp_path / "models")
        assert hub.host == "0.0.0.0"
    env = _image_env("Dockerfile.edge")
    assert Path(env.pop("HYBRID_AGENT_CONFIG")).is_absolute()
    agent = load_config(None, environ={**env, "HYBRID_AGENT_DEVICE_ID": "d1"})
    assert agent.metrics is not None
    assert agent.data_dir == Path(env["HYBRID_AGENT_DATA_DIR"])


# -- compose ----------------------------------------------------------------------------------


def _image_env(dockerfile: str) -> dict[str, str]:
    """The HYBRID_* variables the image's final stage sets."""
    return {
        key: value
        for keyword, rest in _stages(DEPLOY / "docker" / dockerfile)[-1]
        if keyword == "ENV"
        for key, value in re.findall(r"(HYBRID_\w+)=(\S+)", rest)
    }


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _mounts(service: dict[str, Any], credentials: Credentials) -> dict[str, Path]:
    """Container path -> the file or folder on this machine that provides it (named volumes:
    a fresh folder)."""
    out = {}
    for volume in service.get("volumes", []):
        volume = re.sub(r"\$\{\w+:-([^}]+)\}", r"\1", volume)  # the default of ${VAR:-default}
        source, target = volume.split(":")[:2]
        if source.startswith("./dev-credentials/"):
            out[target] = credentials.root / source.removeprefix("./dev-credentials/")
        elif source.startswith("./models/"):
            out[target] = credentials.root.parent / "models" / source.removeprefix("./models/")
            out[target].mkdir(parents=True, exist_ok=True)
        elif source.startswith("."):
            out[target] = (DEPLOY / source).resolve()
        else:
            out[target] = credentials.root.parent / "volumes" / source
            out[target].mkdir(parents=True, exist_ok=True)
    for secret in service.get("secrets", []):
        file = _compose()["secrets"][secret]["file"]
        out[f"/run/secrets/{secret}"] = credentials.root / file.removeprefix("./dev-credentials/")
    return out


def _resolve(path: str, mounts: dict[str, Path]) -> Path:
    best = max((t for t in mounts if path == t or path.startswith(t.rstrip("/") + "/")), key=len)
    return mounts[best] / path[len(best) :].lstrip("/") if path != best else mounts[best]


def test_compose_mounts_what_the_shipped_files_and_the_script_provide(
    credentials: Credentials,
) -> None:
    compose = _compose()
    assert set(compose["services"]) == {
        "mosquitto",
        "minio",
        "minio-init",
        "hub",
        "agent",
        "prometheus",
        "grafana",
    }
    for name, service in compose["services"].items():
        for target, source in _mounts(service, credentials).items():
            assert source.exists(), f"{name}: {target} comes from {source}, which does not exist"
        assert "build" in service or re.search(r":(v?\d|RELEASE\.\d)", service["image"]), (
            f"{name} floats"
        )
    broker = compose["services"]["mosquitto"]
    mounts = _mounts(broker, credentials)
    assert mounts["/mosquitto/config/mosquitto.conf"] == DEPLOY / "mosquitto" / "mosquitto.conf"
    conf = mounts["/mosquitto/config/mosquitto.conf"].read_text()
    for path in re.findall(r"^\w+ (/mosquitto/\S+)", conf, re.MULTILINE):
        assert _resolve(path, mounts).exists(), f"mosquitto.conf needs {path}"
    assert [p.split(":")[-1] for p in broker["ports"]] == ["8883"]
    assert re.search(r"^listener 8883$", conf, re.MULTILINE)


def test_compose_hub_and_agent_settings_load_and_match_the_defaults(
    credentials: Credentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compose = _compose()
    hub = compose["services"]["hub"]
    mounts = _mounts(hub, credentials)
    command = " ".join(hub["command"])
    config = re.search(r"--config (\S+)", command).group(1)  # type: ignore[union-attr]
    data = yaml.safe_load(_resolve(config, mounts).read_text())
    for key in ("ca_file", "cert_file", "key_file"):
        data["mqtt"][key] = str(_resolve(data["mqtt"][key], mounts))
    assert _resolve("/run/secrets/hub_mqtt_password", mounts).read_text()
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(data))
    api_keys = hub["environment"]["HYBRID_HUB_AUTH__API_KEYS"]
    monkeypatch.setenv(
        "HYBRID_HUB_AUTH__API_KEYS", re.sub(r"\$\{HUB_API_KEY[^}]*\}", "k" * 32, api_keys)
    )
    monkeypatch.setenv("HYBRID_HUB_MQTT__PASSWORD", credentials.password("hub"))
    image_env = _image_env("Dockerfile.hub")
    settings = load_settings(
        tmp_path / "hub.yaml",
        model_repository=_resolve(image_env["HYBRID_HUB_MODEL_REPOSITORY"], mounts),
    )
    assert settings.auth.enabled
    assert settings.mqtt is not None
    host, port = settings.mqtt.host_port()
    assert host == "mosquitto"
    assert port == 8884
    # the hub's state is in MinIO's bucket, which minio-init makes, with MinIO's credentials
    assert settings.store.kind == "s3"
    assert settings.store.endpoint_url == "http://minio:9000"
    assert f"store/{settings.store.bucket}" in " ".join(
        compose["services"]["minio-init"]["command"]
    )
    assert (
        hub["environment"]["AWS_ACCESS_KEY_ID"]
        == (compose["services"]["minio"]["environment"]["MINIO_ROOT_USER"])
    )
    assert (
        hub["environment"]["AWS_SECRET_ACCESS_KEY"]
        == (compose["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"])
    )
    assert not any("/var/lib/cloud-hub" in v for v in hub["volumes"])
    assert [p.split()[0].split(":")[-1] for p in hub["ports"]] == [
        str(_hub_port()),
        str(HubSettings.model_fields["grpc_port"].default),
    ]

    agent = compose["services"]["agent"]
    mounts = _mounts(agent, credentials)
    agent_data = yaml.safe_load(_resolve("/etc/edge-agent/config.yaml", mounts).read_text())
    agent_data["cloud"]["ca_file"] = str(_resolve(agent_data["cloud"]["ca_file"], mounts))
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(agent_data))
    image_env = _image_env("Dockerfile.edge")
    assert _resolve(image_env.pop("HYBRID_AGENT_CONFIG"), mounts).is_file()
    image_env["HYBRID_AGENT_DATA_DIR"] = str(tmp_path / "data")
    image_env["HYBRID_AGENT_CLOUD__PASSWORD"] = credentials.password("edge-1")
    config = load_config(tmp_path / "agent.yaml", environ=image_env)
    assert config.cloud is not None
    assert config.cloud.username == config.device_id
    assert config.device_id in credentials.devices
    assert config.cloud.address.port == 8883
    assert agent["ports"] == [f"127.0.0.1:{_agent_port('api_address')}:{config.api.port}"]  # type: ignore[union-attr]
    for model in config.models:
        assert str(model.path).startswith("/models/")
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]
    }
    assert targets == {
        "cloud-hub": [f"hub:{settings.port}"],
        "edge-agent": [f"agent:{config.metrics.port}"],  # type: ignore[union-attr]
    }


def test_the_credentials_script_refuses_names_the_acl_cannot_hold(tmp_path: Path) -> None:
    for bad in ("a/b", "a+b", "#", "fleet", "hub"):
        done = subprocess.run(
            [str(MAKE_CREDENTIALS), "-d", bad, str(tmp_path / "out")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2, (bad, done.stderr)


# -- Kubernetes -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["base", "overlays/gpu", "overlays/tls"])
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize.render(K8S / request.param)


def test_every_manifest_validates_against_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc.message}")
        checked += 1
    assert checked >= 9


def test_the_monitoring_resources_are_well_formed(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    service = kustomize.find(docs, "Service", "cloud-hub")
    monitor = kustomize.find(docs, "ServiceMonitor", "cloud-hub")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
    daemonset = kustomize.find(docs, "DaemonSet", "edge-agent")
    pod_monitor = kustomize.find(docs, "PodMonitor", "edge-agent")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container_ports = {
        p["name"] for c in kustomize.pod_spec(daemonset)["containers"] for p in c.get("ports", [])
    }
    for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in container_ports
    rule = kustomize.find(docs, "PrometheusRule", "hybrid-inference")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    for group in rule["spec"]["groups"]:
        for item in group["rules"]:
            assert set(item) <= {"alert", "expr", "for", "labels", "annotations"}
            assert re.fullmatch(r"\d+[smh]", item["for"])


def _hub_container(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = kustomize.find(docs, "Deployment", "cloud-hub")
    spec = kustomize.pod_spec(deployment)
    return spec, next(c for c in spec["containers"] if c["name"] == "hub")


def test_the_hub_deployment_probes_real_routes_and_loads_its_config(
    rendered: tuple[str, list[dict[str, Any]]],
    hub_routes_ok: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    variant, docs = rendered
    spec, hub = _hub_container(docs)
    ports = {p["name"]: p["containerPort"] for p in hub["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = hub[probe]["httpGet"]
        assert hub_routes_ok(get["path"]), get["path"]
        assert get["port"] in ports
    assert hub["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert hub["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "requests" in hub["resources"]
    assert "limits" in hub["resources"]

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts: dict[str, Path] = {}
    config_text = None
    for mount in hub["volumeMounts"]:
        volume = volumes[mount["name"]]
        local = tmp_path / mount["name"]
        if "configMap" in volume:
            configmap = kustomize.find(docs, "ConfigMap", volume["configMap"]["name"])
            config_text = configmap["data"][mount["subPath"]]
            local = tmp_path / mount["subPath"]
            local.write_text(config_text)
        elif "secret" in volume:
            local.mkdir()
            for item in volume["secret"]["items"]:
                (local / item["path"]).write_text("from the Secret")
        else:
            local.mkdir()
        mounts[mount["mountPath"]] = local
    assert config_text is not None
    args = hub["args"]
    config_path = args[args.index("--config") + 1]
    data = yaml.safe_load(_resolve(config_path, mounts).read_text())
    data["model_repository"] = str(_resolve(data["model_repository"], mounts))
    data["conversions"]["work_dir"] = str(_resolve(data["conversions"]["work_dir"], mounts))
    for key in ("ca_file", "cert_file", "key_file"):
        data["mqtt"][key] = str(_resolve(data["mqtt"][key], mounts))
    (tmp_path / "resolved.yaml").write_text(yaml.safe_dump(data))
    for env in hub["env"]:
        assert env["name"].startswith(("HYBRID_HUB_", "AWS_"))
        if "value" in env:  # a path in the container
            monkeypatch.setenv(env["name"], str(_resolve(env["value"], mounts)))
            continue
        placeholder = (
            json.dumps([{"name": "apps", "key": "k" * 32, "scopes": ["infer"]}])
            if env["name"] == "HYBRID_HUB_AUTH__API_KEYS"
            else "from-the-secret"
        )
        monkeypatch.setenv(env["name"], placeholder)
    settings = load_settings(tmp_path / "resolved.yaml")
    assert settings.store.kind == "s3"
    assert settings.auth.enabled
    assert settings.mqtt is not None
    assert settings.mqtt.shared
    assert settings.port in ports.values()
    service = kustomize.find(docs, "Service", "cloud-hub")
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert (
        kustomize.find(docs, "Deployment", "cloud-hub")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        > settings.graceful_shutdown_s
    )
    assert settings.grpc_port in ports.values()
    service_ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert service_ports["grpc"] in ports
    if variant == "overlays/tls":
        assert settings.tls is not None
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert hub[probe]["httpGet"]["scheme"] == "HTTPS"
        for ingress in ("cloud-hub-http", "cloud-hub-grpc"):
            backend = kustomize.find(docs, "Ingress", ingress)["spec"]["rules"][0]["http"]
            assert backend["paths"][0]["backend"]["service"]["port"]["name"] in service_ports
    else:
        assert settings.tls is None
    if variant == "overlays/gpu":
        assert hub["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert hub["image"].endswith("-gpu")
        assert hub["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    else:
        assert "nvidia.com/gpu" not in hub["resources"].get("limits", {})


def test_no_hub_state_is_kept_in_a_pod(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """Replicas share their state through the object store; what a pod keeps on emptyDir is
    scratch only, and the model repository is a volume every replica mounts."""
    _, docs = rendered
    spec, hub = _hub_container(docs)
    configmap = kustomize.find(docs, "ConfigMap", "cloud-hub-config")
    settings = yaml.safe_load(configmap["data"]["hub.yaml"])
    assert settings["store"]["kind"] == "s3"
    assert settings["store"]["bucket"]
    assert "artifact_store" not in settings
    env = {e["name"]: e for e in hub["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "cloud-hub-store"
    volumes = {v["name"]: v for v in spec["volumes"]}
    scratch = settings["conversions"]["work_dir"]
    for mount in hub["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            assert mount["mountPath"] == "/tmp", mount
            assert scratch.startswith("/tmp/")
        if mount["mountPath"] == settings["model_repository"]:
            claim = kustomize.find(
                docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]
            )
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for doc in docs:
        for volume in doc.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            if doc["metadata"]["name"] == "cloud-hub" and "emptyDir" in volume:
                assert volume["name"] == "tmp"


def test_kubectl_and_the_fallback_renderer_give_the_same_objects() -> None:
    if kustomize.kubectl() is None:
        pytest.skip("no kubectl with kustomize v4+ here: the fallback renderer is used")
    for variant in ("base", "overlays/gpu"):
        by_kubectl = kustomize.render(K8S / variant)
        by_us = kustomize.render_locally(K8S / variant)
        key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
        assert sorted(by_kubectl, key=key) == sorted(by_us, key=key), variant


def test_the_autoscaler_and_disruption_budget_target_the_hub(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    deployment = kustomize.find(docs, "Deployment", "cloud-hub")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = kustomize.find(docs, "HorizontalPodAutoscaler", "cloud-hub")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "cloud-hub",
    }
    adapter = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    pod_metrics = [
        m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"
    ]
    assert pod_metrics == ["hub_queue_depth"]
    for name in pod_metrics:
        rule = served[name]
        assert re.fullmatch(rule["name"]["matches"], name)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert rule["seriesQuery"].startswith(name + "{")
    pdb = kustomize.find(docs, "PodDisruptionBudget", "cloud-hub")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_agent_daemonset_runs_on_edge_nodes_and_loads_its_config(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, docs = rendered
    daemonset = kustomize.find(docs, "DaemonSet", "edge-agent")
    spec = kustomize.pod_spec(daemonset)
    assert spec["nodeSelector"]
    assert any(t["key"] == "node-role.kubernetes.io/edge" for t in spec["tolerations"])
    agent = spec["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        get = agent[probe]["httpGet"]
        assert _agent_route(get["path"]) in (Endpoint.LIVE, Endpoint.READY)
    configmap = kustomize.find(docs, "ConfigMap", "edge-agent-config")
    (tmp_path / "config.yaml").write_text(configmap["data"]["config.yaml"])
    values = {"NODE_NAME": "edge-node-1", "HOST_IP": "10.0.0.7"}
    environ = {}
    for env in agent["env"]:
        if "value" in env:
            value = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], env["value"])
            if env["name"].startswith("HYBRID_AGENT_"):
                environ[env["name"]] = value
    environ["HYBRID_AGENT_CLOUD__PASSWORD"] = "read-from-the-node"
    environ["HYBRID_AGENT_DATA_DIR"] = str(tmp_path / "data")
    config = load_config(tmp_path / "config.yaml", environ=environ)
    assert config.device_id == "edge-node-1"
    assert spec["nodeSelector"]["hybrid-inference.io/device-class"] == config.device_class
    assert config.cloud is not None
    assert config.cloud.username == "edge-node-1"
    assert config.cloud.tls
    assert config.metrics is not None
    metrics_port = next(p for p in agent["ports"] if p["name"] == "metrics")["containerPort"]
    assert config.metrics.port == metrics_port
    assert agent["readinessProbe"]["httpGet"]["port"] == config.api.port  # type: ignore[union-attr]
    mounted = {m["mountPath"] for m in agent["volumeMounts"]}
    assert str(config.cloud.ca_file).startswith(tuple(mounted))
    assert "/etc/hybrid-inference/password" in agent["args"][0]
    assert "/etc/hybrid-inference" in mounted
    assert spec["terminationGracePeriodSeconds"] > config.drain_timeout_s


def test_every_secret_the_manifests_use_is_documented() -> None:
    docs = kustomize.render(K8S / "base")
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "secretName" in node:
                names.add(node["secretName"])
            if "secretKeyRef" in node:
                names.add(node["secretKeyRef"]["name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(docs)
    assert names == {"hybrid-broker-hub", "cloud-hub-api-keys", "cloud-hub-store"}
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for name in names:
        assert f"create secret generic {name} " in guide, name


# -- dashboards and alerts --------------------------------------------------------------------


def test_the_dashboard_is_provisioned_and_queries_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"][0]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "hybrid-inference.yaml").read_text()
    )["providers"][0]
    compose = _compose()["services"]
    grafana_mounts = dict(v.split(":")[1::-1] for v in compose["grafana"]["volumes"])
    assert grafana_mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads(
        (DEPLOY / "grafana" / "dashboards" / "hybrid-inference.json").read_text()
    )
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("edge vs cloud", "latency", "queue", "errors", "fallback reasons", "devices"):
        assert topic in titles
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
    assert len(promql.queries()) > 20
