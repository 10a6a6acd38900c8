"""The emulated arm64 userland the lane built (``scripts/arm64/userland.sh``), and an
``edge-agent run`` inside it, started from the host with ``chroot``.

The host runs the broker and the hub; the agent runs as aarch64 under qemu-user-static and
shares the host's network, so it reaches them on loopback and the host's tests reach its local
API the same way. Files the agent reads live under the userland's ``/tmp`` (a private tmpfs the
lane mounts), seen by the host at ``<rootfs>/tmp``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from edge_agent.client import EdgeClient
from tests.support.broker import free_port

USERLAND_ENV = "HYBRID_ARM64_USERLAND"
VENV = PurePosixPath("/opt/edge-venv")
START_TIMEOUT_S = 240.0
"""Starting Python, numpy, pydantic and LiteRT under emulation takes tens of seconds."""


@dataclass(frozen=True)
class Userland:
    rootfs: Path

    def host_path(self, inside: PurePosixPath) -> Path:
        return self.rootfs / inside.relative_to("/")

    def command(self, *args: str, env: dict[str, str] | None = None) -> list[str]:
        variables = {
            "PATH": f"{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        return [
            chroot,
            str(self.rootfs),
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in variables.items()),
            *args,
        ]

    def run(self, *args: str, timeout_s: float = 300.0) -> str:
        done = subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"{args} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def workdir(self, name: str) -> PurePosixPath:
        inside = PurePosixPath("/tmp") / f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        self.host_path(inside).mkdir(parents=True)
        return inside

    def copy_in(self, path: Path, folder: PurePosixPath) -> PurePosixPath:
        inside = folder / path.name
        shutil.copyfile(path, self.host_path(inside))
        return inside


@dataclass
class ChrootAgent:
    """``edge-agent run`` inside the userland, on loopback ports the host can reach."""

    userland: Userland
    workdir: PurePosixPath
    config: dict[str, Any]
    api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        return self.userland.host_path(self.workdir / "agent.log")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> EdgeClient:
        return EdgeClient(self.address, **kwargs)

    def start(self) -> None:
        config = {
            "data_dir": str(self.workdir / "data"),
            "api_address": self.address,
            "metrics_address": "off",
            **self.config,
        }
        path = self.workdir / "agent.yaml"
        self.userland.host_path(path).write_text(yaml.safe_dump(config))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.userland.command(f"{VENV}/bin/edge-agent", "run", "--config", str(path)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        with EdgeClient(self.address, timeout_s=5) as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"edge-agent (arm64) exited with {self.process.returncode}:\n{self.log()}"
                    )
                try:
                    status = client.status()
                    states = [m["state"] for m in status["detail"]["models"].values()]
                    cloud = status["detail"].get("cloud")
                    if "loading" not in states and (cloud is None or cloud["connected"]):
                        return
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(
                        f"edge-agent (arm64) not ready after {START_TIMEOUT_S} s:\n{self.log()}"
                    )
                time.sleep(0.2)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
