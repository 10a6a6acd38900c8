"""The three servers of the demo, each on a free loopback port, started and waited for:
Mosquitto, ``cloud-hub serve`` with its MQTT bridge, and ``edge-agent run`` with a cloud link.

The agent serves three names, so one run yields everything the report needs:

- ``digits``: the edge model, ``on_low_confidence`` fallback to the hub's ``digits-cloud``;
  updated through signed releases in the second round (:mod:`demo.loop`);
- ``digits-edge-only``: the same file, never handed over (the edge-only baseline);
- ``digits-cloud-only``: a remote model, always answered by ``digits-cloud`` (the cloud baseline);
- ``iris``: a remote model, always answered by ``iris_vqc``, the hub's experimental quantum
  classifier (no such model is on the device).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_agent.client import EdgeClient
from protocols import artifact_file

from .artifacts import DemoModels
from .errors import DemoError
from .processes import Child, Supervisor, executable

HYBRID_MODEL = "digits"
EDGE_ONLY_MODEL = "digits-edge-only"
CLOUD_ONLY_MODEL = "digits-cloud-only"
HUB_MODEL = "digits-cloud"
QUANTUM_MODEL = "iris"
QUANTUM_HUB_MODEL = "iris_vqc"
QUANTUM_DEADLINE_S = 10.0
INPUT_NAME = "pixels"
OUTPUT_NAME = "output_0"
DEVICE_ID = "demo-device"
FLEET_DEVICE_ID = "demo-fleet"
"""The second device: its fallbacks are captured (the measuring device opted out)."""
HEALTH_WINDOW_S = 2.0
DEVICE_CLASS = "rpi4"
LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
NO_BROKER = (
    "neither Mosquitto nor amqtt is installed, and the hub and the agent talk through an MQTT "
    "broker: `sudo apt-get install mosquitto` (or `pip install amqtt`), then run `make demo` again"
)


@dataclass(frozen=True, kw_only=True)
class BrokerInfo:
    """The broker the demo started: Mosquitto (MQTT 5), else amqtt (MQTT 3.1.1 only)."""

    address: str
    name: str
    protocol: str

    def __str__(self) -> str:
        return f"{self.name} on {self.address}, MQTT {self.protocol}"


def find_amqtt() -> str | None:
    beside = Path(sys.executable).with_name("amqtt")
    return str(beside) if beside.exists() else shutil.which("amqtt")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    return found or next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def _failed(child: Child, message: str) -> DemoError:
    tail = child.tail()
    if not tail:
        return DemoError(f"{message}, and its log ({child.log}) is empty")
    return DemoError(f"{message}; the end of its log ({child.log}):\n{tail}")


def _wait(child: Child, what: str, ready: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if child.process.poll() is not None:
            raise _failed(child, f"{what} exited with {child.process.returncode}")
        try:
            if ready():
                return
        except DemoError:
            raise
        except Exception:  # not listening yet: connection refused, 503, the client's errors
            pass
        if time.monotonic() > deadline:
            raise _failed(child, f"{what} was not ready after {timeout_s:.0f} s")
        time.sleep(0.1)


def start_broker(
    supervisor: Supervisor, work: Path, timeout_s: float, choice: str = "auto"
) -> BrokerInfo:
    """Mosquitto when it is installed, else the pure-Python amqtt (MQTT 3.1.1, no shared
    subscriptions), which the protocol supports; ``choice`` forces one."""
    port = free_port()
    binary = None if choice == "amqtt" else find_mosquitto()
    if binary is None and choice == "mosquitto":
        raise DemoError(NO_BROKER)
    if binary is not None:
        conf = work / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        child = supervisor.start("mosquitto", [binary, "-c", str(conf)])
        info = BrokerInfo(address=f"127.0.0.1:{port}", name="Mosquitto", protocol="5")
    else:
        amqtt = find_amqtt()
        if amqtt is None:
            raise DemoError(NO_BROKER)
        conf = work / "amqtt.yaml"
        conf.write_text(
            f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        child = supervisor.start("amqtt", [amqtt, "-c", str(conf)])
        info = BrokerInfo(address=f"127.0.0.1:{port}", name="amqtt", protocol="3.1.1")

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    _wait(child, info.name, listening, timeout_s)
    return info


def write_repository(root: Path, models: DemoModels, quantum_model: Path) -> Path:
    """A repository in Triton's layout: the cloud ONNX artifact as ``digits-cloud`` and the
    quantum classifier's ``model.qml.json`` as ``iris_vqc`` (the ``quantum`` backend, exact
    statevector simulation)."""
    vqc = root / QUANTUM_HUB_MODEL
    (vqc / "1").mkdir(parents=True)
    shutil.copyfile(quantum_model, vqc / "1" / quantum_model.name)
    vqc_config = {
        "backend": "quantum",
        "max_batch_size": 16,
        "dynamic_batching": {"max_queue_delay_us": 1000},
        "parameters": {"simulator": "statevector"},
    }
    (vqc / "config.yaml").write_text(yaml.safe_dump(vqc_config, sort_keys=False))
    folder = root / HUB_MODEL
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(models.cloud.path, folder / "1" / artifact_file("onnx"))
    config = {
        "backend": "onnxruntime",
        "max_batch_size": 32,
        "labels": list(LABELS),
        "intra_op_threads": 1,
        # The fleet's fallbacks, kept for the second round; written when the demo asks.
        "capture": {"shard_records": 100_000, "flush_interval_s": 3600},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def _metric(url: str, series: str) -> float | None:
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=2) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return None


def start_hub(
    supervisor: Supervisor, work: Path, repository: Path, broker: BrokerInfo, timeout_s: float
) -> str:
    port = free_port()
    url = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_HUB_")}
    env.update(HYBRID_HUB_GRACEFUL_SHUTDOWN_S="5", PYTHONUNBUFFERED="1")
    if broker.protocol != "5":
        env.update(HYBRID_HUB_MQTT__PROTOCOL=broker.protocol, HYBRID_HUB_MQTT__SHARED="false")
    child = supervisor.start(
        "cloud-hub",
        [
            executable("cloud-hub"),
            "serve",
            "--model-repository",
            str(repository),
            "--port",
            str(port),
            "--grpc-port",
            "off",
            "--mqtt-broker",
            broker.address,
            "--log-level",
            "warning",
        ],
        env=env,
    )

    def ready() -> bool:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as reply:
            if reply.status != 200:
                return False
        return _metric(url, "hub_mqtt_connected") == 1.0

    _wait(child, "cloud-hub", ready, timeout_s)
    return url


def hybrid_model(path: Path, labels: Path, threshold: float) -> dict[str, Any]:
    return {
        "name": HYBRID_MODEL,
        "path": str(path),
        "version": "1",
        "labels": str(labels),
        "fallback": {
            "policy": "on_low_confidence",
            "cloud_model": HUB_MODEL,
            "confidence": "max_probability",
            "threshold": threshold,
            "on_cloud_unavailable": "local",
        },
    }


def _labels(work: Path) -> Path:
    labels = work / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return labels


def fleet_agent_config(
    work: Path, models: DemoModels, broker: BrokerInfo, threshold: float
) -> dict[str, Any]:
    """The fleet's device: the same edge release and rule; its fallbacks may be captured."""
    return {
        "device_id": FLEET_DEVICE_ID,
        "device_class": DEVICE_CLASS,
        "data_dir": str(work / "fleet-data"),
        "api_address": f"127.0.0.1:{free_port()}",
        "metrics_address": "off",
        "probe_models": False,
        "drain_timeout_s": 5,
        "log_level": "WARNING",
        "models": [hybrid_model(models.edge.path, _labels(work), threshold)],
        "cloud": {"broker": broker.address, "protocol": broker.protocol, "telemetry_interval_s": 0},
    }


def agent_config(
    work: Path,
    models: DemoModels,
    broker: BrokerInfo,
    threshold: float,
    *,
    hub: str | None = None,
    trusted_key: str | None = None,
) -> dict[str, Any]:
    """The measuring device: never captured; takes signed releases from ``hub`` when given."""
    labels = _labels(work)
    edge = str(models.edge.path)
    updates = (
        {}
        if hub is None or trusted_key is None
        else {
            "updates": {
                "hub_url": f"http://{hub}",
                "trusted_keys": [trusted_key],
                "health_window_s": HEALTH_WINDOW_S,
                "health_interval_s": 0.2,
            }
        }
    )
    return {
        "device_id": DEVICE_ID,
        "device_class": DEVICE_CLASS,
        "capture_opt_out": True,
        **updates,
        "data_dir": str(work / "agent-data"),
        "api_address": f"127.0.0.1:{free_port()}",
        "metrics_address": "off",
        "probe_models": False,  # model-convert has just loaded and validated the file
        "drain_timeout_s": 5,
        "log_level": "WARNING",
        "models": [
            hybrid_model(models.edge.path, labels, threshold),
            {"name": EDGE_ONLY_MODEL, "path": edge, "labels": str(labels)},
        ],
        "cloud": {
            "broker": broker.address,
            "protocol": broker.protocol,
            "telemetry_interval_s": 0,
            "remote_models": [
                {"name": CLOUD_ONLY_MODEL, "cloud_model": HUB_MODEL},
                {
                    "name": QUANTUM_MODEL,
                    "cloud_model": QUANTUM_HUB_MODEL,
                    "deadline_s": QUANTUM_DEADLINE_S,
                },
            ],
        },
    }


def start_agent(
    supervisor: Supervisor,
    work: Path,
    config: dict[str, Any],
    timeout_s: float,
    name: str = "edge-agent",
) -> str:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_AGENT_")}
    env["PYTHONUNBUFFERED"] = "1"
    child = supervisor.start(
        name, [executable("edge-agent"), "run", "--config", str(path)], env=env
    )
    address = str(config["api_address"])
    client = EdgeClient(address, timeout_s=2)

    def ready() -> bool:
        detail = client.status()["detail"]
        states = {name: m["state"] for name, m in detail["models"].items()}
        failed = [
            f"{name} ({m.get('error') or 'no reason given'})"
            for name, m in detail["models"].items()
            if m["state"] == "failed"
        ]
        if failed:
            raise DemoError(f"the agent could not load {'; '.join(failed)}")
        cloud = detail.get("cloud") or {}
        return "loading" not in states.values() and bool(cloud.get("connected"))

    try:
        _wait(child, "edge-agent", ready, timeout_s)
    finally:
        client.close()
    return address
