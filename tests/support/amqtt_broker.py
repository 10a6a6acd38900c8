"""A pure-Python MQTT 3.1.1 broker (amqtt) on a free loopback port, for brokers without MQTT 5."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.broker import Broker, wait_for_port


def amqtt_command() -> str | None:
    beside = Path(sys.executable).with_name("amqtt")
    return str(beside) if beside.exists() else shutil.which("amqtt")


@dataclass
class AmqttBroker(Broker):
    """Starts amqtt instead of Mosquitto; stopping and the address work as for :class:`Broker`."""

    def start(self) -> None:
        command = amqtt_command()
        if command is None:
            raise RuntimeError("amqtt is not installed (pip install amqtt)")
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: {self.host}:{self.port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        with (self.workdir / "amqtt.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen([command, "-c", str(conf)], stdout=log, stderr=log)
        wait_for_port(self.port)
