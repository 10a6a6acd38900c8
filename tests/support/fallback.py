"""For the fallback tests: a real ``edge-agent run`` with a cloud section, a hub with its MQTT
bridge, a model repository for it, and a watcher of a device's MQTT topics."""

from __future__ import annotations

import http.client
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.client import EdgeClient
from tests.support import onnx_models
from tests.support.broker import Broker, free_port
from tests.support.hub import HubProcess, add_model
from tests.support.models import DigitsModels

EDGE_AGENT = Path(sys.executable).with_name("edge-agent")
START_TIMEOUT_S = 60.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_AGENT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class AgentProcess:
    """One agent: its config file stays, so it can be killed and started again on the same
    data dir and ports."""

    workdir: Path
    config: Mapping[str, Any]
    api_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> EdgeClient:
        return EdgeClient(self.address, **kwargs)

    def start(self, *, wait_connected: bool = True) -> None:
        """Start, wait until no model is loading and, with a cloud section, until the cloud link
        is connected."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "device_id": "fallback-device",
            "data_dir": str(self.workdir / "data"),
            "api_address": self.address,
            "metrics_address": f"127.0.0.1:{self.metrics_port}",
            "probe_models": False,
            **self.config,
        }
        path = self.workdir / "agent.yaml"
        path.write_text(yaml.safe_dump(config))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(EDGE_AGENT), "run", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        client = EdgeClient(self.address, timeout_s=2)
        try:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"edge-agent exited with {self.process.returncode}:\n{self.log()}"
                    )
                try:
                    status = client.status()
                    states = [m["state"] for m in status["detail"]["models"].values()]
                    cloud = status["detail"].get("cloud")
                    if "loading" not in states and (
                        not wait_connected or cloud is None or cloud["connected"]
                    ):
                        return
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(
                        f"edge-agent not ready after {START_TIMEOUT_S} s:\n{self.log()}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def metric(self, series: str) -> float:
        """The value of one series, ``name{label="v",...}`` exactly as exposed; 0 when absent."""
        for line in self.metrics().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@contextmanager
def agent_starter(folder: Path) -> Iterator[Callable[[dict[str, Any]], AgentProcess]]:
    """``make(config)`` starts an agent in its own folder under ``folder`` (``agent-0``,
    ``agent-1``, ...); every agent it started is stopped on the way out."""
    agents: list[AgentProcess] = []

    def make(config: dict[str, Any]) -> AgentProcess:
        agent = AgentProcess(workdir=folder / f"agent-{len(agents)}", config=config)
        agents.append(agent)
        agent.start()
        return agent

    try:
        yield make
    finally:
        for agent in agents:
            agent.stop()


class Watcher:
    """A paho client that collects every message on the topics it is given."""

    def __init__(self, broker: Broker, *topics: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not subscribed.wait(5):
            raise AssertionError("the watcher could not subscribe")

    def next(self, timeout_s: float = 10.0) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fallback_repository(root: Path, digits: DigitsModels) -> Path:
    """``cloud_digits`` (the digits fp32 ``.tflite`` on the hub's tflite backend) and ``add_sub``
    (ONNX: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, FP32 [batch, 4])."""
    folder = root / "cloud_digits"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.tflite").symlink_to(digits.model("fp32"))
    (folder / "config.yaml").write_text(
        "backend: tflite\nmax_batch_size: 64\ndynamic_batching: {max_queue_delay_us: 200}\n"
    )
    add_model(
        root,
        "add_sub",
        {
            "backend": "onnxruntime",
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_us": 200},
        },
        onnx_models.add_sub,
    )
    return root


def hub_metric(hub: HubProcess, series: str) -> float:
    with urllib.request.urlopen(f"http://{hub.url}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def start_mqtt_hub(
    repository: Path, workdir: Path, broker: Broker, **mqtt_settings: Any
) -> HubProcess:
    """A started ``cloud-hub serve`` whose MQTT bridge is connected to ``broker``."""
    workdir.mkdir(parents=True, exist_ok=True)
    hub = HubProcess(
        repository=repository,
        workdir=workdir,
        config={"mqtt": {"broker": broker.address, **mqtt_settings}},
    )
    hub.start()
    wait_hub_connected(hub)
    return hub


def wait_hub_connected(hub: HubProcess, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while hub_metric(hub, "hub_mqtt_connected") != 1.0:
        if time.monotonic() > deadline:
            raise AssertionError(f"the hub's MQTT bridge did not connect:\n{hub.log}")
        time.sleep(0.05)
