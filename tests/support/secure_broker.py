"""The shipped secured Mosquitto (``deploy/mosquitto/mosquitto.conf``) with credentials made by the
shipped script, on free loopback ports, and MQTT probes that log in as a device or a hub.

    creds = make_credentials(tmp_path / "creds", {"dev-a": "alpha", "dev-b": "beta"})
    broker = SecureBroker(workdir=tmp_path / "broker", credentials=creds)
    broker.start()
    with broker.probe("dev-a") as a:            # TLS + dev-a's password on the device listener
        a.subscribe("hybrid/v1/dev-a/infer/response")
        a.publish("hybrid/v1/dev-a/infer/request", b"{}")
    broker.agent_cloud("dev-a")                 # an edge agent's ``cloud`` section for dev-a
    broker.hub_mqtt()                           # a hub's ``mqtt`` section (listener 8884)
    broker.stop()

Only the listener ports and the file paths of the shipped configuration are rewritten; every
other line is used as shipped.
"""

from __future__ import annotations

import os
import pwd
import queue
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.broker import free_port, require_mosquitto, stop_process, wait_for_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
MAKE_CREDENTIALS = DEPLOY / "mosquitto" / "make-dev-credentials.sh"
DEVICE_LISTENER = 8883
HUB_LISTENER = 8884
HUB_USER = "hub"


@dataclass(frozen=True)
class Credentials:
    """What ``make-dev-credentials.sh`` wrote, by role."""

    root: Path
    devices: Mapping[str, str]
    """Device id to device class."""
    hub_user: str = HUB_USER

    @property
    def ca_file(self) -> Path:
        return self.root / "certs" / "ca.crt"

    @property
    def hub_cert(self) -> Path:
        return self.root / "hub" / "hub.crt"

    @property
    def hub_key(self) -> Path:
        return self.root / "hub" / "hub.key"

    def password(self, user: str) -> str:
        return (self.root / "passwords" / user).read_text()


def make_credentials(out: Path, devices: Mapping[str, str]) -> Credentials:
    """Run the shipped script for a hub and these devices (id to class)."""
    args = [str(MAKE_CREDENTIALS)]
    for device_id, device_class in devices.items():
        args += ["-d", f"{device_id}:{device_class}"]
    subprocess.run([*args, str(out)], check=True, capture_output=True, timeout=120)
    listed = dict(
        line.split("\t") for line in (out / "devices.tsv").read_text().splitlines() if line
    )
    assert listed == dict(devices), listed
    return Credentials(root=out, devices=dict(devices))


def shipped_config(*, device_port: int, hub_port: int, credentials: Credentials, data: Path) -> str:
    """The shipped ``mosquitto.conf`` with its two listeners on loopback ports and its paths
    pointing at ``credentials`` and ``data``."""
    text = MOSQUITTO_CONF.read_text()
    ports = {str(DEVICE_LISTENER): device_port, str(HUB_LISTENER): hub_port}
    out = []
    for line in text.splitlines():
        match = re.fullmatch(r"listener (\d+)", line)
        if match:
            line = f"listener {ports.pop(match.group(1))} 127.0.0.1"
        line = line.replace("/mosquitto/config/", f"{credentials.root}/config/")
        line = line.replace("/mosquitto/certs/", f"{credentials.root}/certs/")
        line = line.replace("/mosquitto/data/", f"{data}/")
        out.append(line)
    assert not ports, f"the shipped config has no listener {sorted(ports)}"
    settings = [line for line in out if line and not line.startswith("#")]
    assert not any(" /mosquitto/" in line for line in settings), settings
    return "\n".join(out) + "\n"


def _hand_over(folder: Path) -> None:
    """As root, give ``folder`` to the user Mosquitto drops to (``mosquitto``, else ``nobody``)."""
    if os.geteuid() != 0:
        return
    for name in ("mosquitto", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        return


class Probe:
    """One paho client over TLS that records what it receives and how the broker answered.

    ``connect_rc`` is the CONNACK reason (``None`` when the TLS handshake or the socket failed,
    with the error in ``connect_error``).
    """

    def __init__(
        self,
        port: int,
        ca_file: Path,
        *,
        username: str | None,
        password: str | None,
        client_id: str = "",
        cert: tuple[Path, Path] | None = None,
        protocol: int = mqtt.MQTTv5,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subscribed: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.published: queue.Queue[int] = queue.Queue()
        self.connect_rc: ReasonCode | None = None
        self.connect_error: Exception | None = None
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.tls_set(
            ca_certs=str(ca_file),
            certfile=str(cert[0]) if cert else None,
            keyfile=str(cert[1]) if cert else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.put(list(codes))
        self.client.on_publish = lambda c, u, mid, rc, p: self.published.put(mid)
        try:
            self.client.connect("127.0.0.1", port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            self.connect_error = exc
            return
        self.client.loop_start()
        self._connected.wait(10)

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self.connect_rc = rc
        self._connected.set()

    def _on_disconnect(self, *args: Any) -> None:
        self._disconnected.set()
        self._connected.set()  # a refused TLS handshake ends here, with no CONNACK

    @property
    def accepted(self) -> bool:
        """The broker accepted the login and has not dropped the connection since."""
        return (
            self.connect_rc is not None
            and not self.connect_rc.is_failure
            and not self._disconnected.is_set()
        )

    def wait_dropped(self, timeout_s: float = 5.0) -> bool:
        return self._disconnected.wait(timeout_s)

    def subscribe(self, topic: str, timeout_s: float = 5.0) -> list[ReasonCode]:
        """Subscribe at QoS 1 and return the SUBACK reason codes."""
        self.client.subscribe(topic, qos=1)
        return self.subscribed.get(timeout=timeout_s)

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, timeout_s: float = 5.0
    ) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement (which Mosquitto sends
        for a denied publish too: the message is dropped, not refused)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout_s)

    def received(self, timeout_s: float) -> list[mqtt.MQTTMessage]:
        """Everything received within ``timeout_s``."""
        out = []
        try:
            out.append(self.messages.get(timeout=timeout_s))
            while True:
                out.append(self.messages.get(timeout=0.2))
        except queue.Empty:
            return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def vanish(self) -> None:
        """Drop the connection without DISCONNECT, as a crashed device would: the broker
        publishes the Last Will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SecureBroker:
    """One Mosquitto process running the shipped secured configuration."""

    workdir: Path
    credentials: Credentials
    device_port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _runtime: Path | None = None

    @property
    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        binary = require_mosquitto()
        self.workdir.mkdir(parents=True, exist_ok=True)
        runtime = self._runtime_dir()
        data = runtime / "data"
        data.mkdir(exist_ok=True)
        for part in ("config", "certs"):
            shutil.copytree(self.credentials.root / part, runtime / part, dirs_exist_ok=True)
        _hand_over(runtime)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            shipped_config(
                device_port=self.device_port,
                hub_port=self.hub_port,
                credentials=Credentials(root=runtime, devices=self.credentials.devices),
                data=data,
            )
        )
        with (self.workdir / "mosquitto.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        try:
            wait_for_port(self.device_port)
            wait_for_port(self.hub_port)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"mosquitto did not start:\n{self.log}") from None

    def _runtime_dir(self) -> Path:
        """Where the broker's files live. Started as root, Mosquitto drops to its own user,
        which cannot enter pytest's private temporary folders: then a folder of its own."""
        if os.geteuid() != 0:
            path = self.workdir / "runtime"
            path.mkdir(exist_ok=True)
            return path
        if self._runtime is None:
            self._runtime = Path(tempfile.mkdtemp(prefix="secure-broker-"))
        return self._runtime

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def close(self) -> None:
        """Stop, and remove the folder made for a broker started as root."""
        self.stop()
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    def probe(
        self,
        username: str | None,
        *,
        password: str | None = None,
        client_id: str = "",
        hub_listener: bool = False,
        cert: tuple[Path, Path] | None = None,
        protocol: int = mqtt.MQTTv5,
        will: tuple[str, bytes] | None = None,
    ) -> Probe:
        """A client logged in as ``username`` with its own password unless ``password`` is
        given (``None`` username: anonymous), with an optional Last Will. ``hub_listener`` connects to the hubs' port, with
        ``cert`` (default: the hub's client certificate)."""
        if password is None and username is not None:
            password = self.credentials.password(username)
        port = self.hub_port if hub_listener else self.device_port
        if hub_listener and cert is None:
            cert = (self.credentials.hub_cert, self.credentials.hub_key)
        return Probe(
            port,
            self.credentials.ca_file,
            username=username,
            password=password,
            client_id=client_id,
            cert=cert,
            protocol=protocol,
            will=will,
        )

    def hub_mqtt(self, **extra: Any) -> dict[str, Any]:
        """A hub's ``mqtt`` settings section for this broker."""
        creds = self.credentials
        return {
            "broker": f"127.0.0.1:{self.hub_port}",
            "username": creds.hub_user,
            "password": creds.password(creds.hub_user),
            "tls": True,
            "ca_file": str(creds.ca_file),
            "cert_file": str(creds.hub_cert),
            "key_file": str(creds.hub_key),
            **extra,
        }

    def agent_cloud(self, device_id: str, **extra: Any) -> dict[str, Any]:
        """An edge agent's ``cloud`` section logging in as ``device_id``."""
        return {
            "broker": f"127.0.0.1:{self.device_port}",
            "username": device_id,
            "password": self.credentials.password(device_id),
            "tls": True,
            "ca_file": str(self.credentials.ca_file),
            **extra,
        }
