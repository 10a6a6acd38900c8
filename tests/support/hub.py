"""Start a real ``cloud-hub serve`` process on a free loopback port, and write model repositories."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.broker import free_port


def add_model(
    repo: Path,
    name: str,
    config: Mapping[str, Any],
    build: Callable[[Path], Path],
    *,
    version: int = 1,
    filename: str = "model.onnx",
) -> Path:
    folder = repo / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(dict(config)))
    return build(folder / str(version) / filename)


OIP_BATCHING = {"max_queue_delay_us": 2000, "max_queue_size": 256}


def write_oip_repository(
    repo: Path, *, cached_classifier: bool = False, scaled_dtypes: bool = False
) -> Path:
    """The models the OIP integration tests share: two inputs and outputs with batching
    (``add_sub``), FP16, INT64, BOOL, BYTES, a labelled classifier (its response cache on with
    ``cached_classifier``), an unbatched FP64 model, and with ``scaled_dtypes`` one ``x * 2``
    model per remaining numeric datatype (``int8``, ``uint16``, ``int32``, ``uint32``,
    ``uint64``, ``fp32``)."""
    from onnx import TensorProto

    from tests.support import onnx_models

    batched = {"backend": "onnxruntime", "dynamic_batching": OIP_BATCHING}
    add_model(repo, "add_sub", {**batched, "max_batch_size": 64}, onnx_models.add_sub)
    add_model(repo, "fp16", {"backend": "onnxruntime", "max_batch_size": 8}, onnx_models.scale)
    add_model(repo, "int64", {**batched, "max_batch_size": 8}, onnx_models.int64_add)
    add_model(repo, "bool", {"backend": "onnxruntime", "max_batch_size": 8}, onnx_models.bool_logic)
    add_model(repo, "strings", {"backend": "onnxruntime", "max_batch_size": 8}, onnx_models.strings)
    classifier: dict[str, Any] = {
        **batched,
        "max_batch_size": 32,
        "labels": [f"digit-{i}" for i in range(10)],
    }
    if cached_classifier:
        classifier["response_cache"] = {"enabled": True}
    add_model(repo, "classifier", classifier, onnx_models.classifier)
    add_model(
        repo,
        "fp64_fixed",
        {"backend": "onnxruntime"},
        lambda p: onnx_models.scale(p, TensorProto.DOUBLE, 3.0),
    )
    if scaled_dtypes:
        for name, elem in (
            ("int8", TensorProto.INT8),
            ("uint16", TensorProto.UINT16),
            ("int32", TensorProto.INT32),
            ("uint32", TensorProto.UINT32),
            ("uint64", TensorProto.UINT64),
            ("fp32", TensorProto.FLOAT),
        ):
            add_model(
                repo,
                name,
                {"backend": "onnxruntime", "max_batch_size": 8},
                lambda p, e=elem: onnx_models.scale(p, e, 2),
            )
    return repo


def console_script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass
class HubProcess:
    repository: Path
    workdir: Path
    config: Mapping[str, Any] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    grpc_port: int = 0
    """0 keeps the gRPC listener off; pass ``free_port()`` to serve gRPC too."""
    process: subprocess.Popen[bytes] | None = None
    ssl_context: ssl.SSLContext | None = None
    """How to reach a hub serving TLS (its CA, and a client certificate for mutual TLS)."""

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log(self) -> str:
        path = self.workdir / "hub.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout_s: float = 60.0) -> None:
        args = [
            console_script("cloud-hub"),
            "serve",
            "--model-repository",
            str(self.repository),
            "--port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
        ]
        if self.config is not None:
            conf = self.workdir / "hub.yaml"
            conf.write_text(yaml.safe_dump(json.loads(json.dumps(self.config))))
            args += ["--config", str(conf)]
        with (self.workdir / "hub.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                args, stdout=log, stderr=log, env={**os.environ, **self.env}
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cloud-hub exited with {self.process.returncode}:\n{self.log}")
            try:
                scheme = "https" if self.ssl_context else "http"
                with urllib.request.urlopen(
                    f"{scheme}://{self.url}/v2/health/ready", timeout=1, context=self.ssl_context
                ) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"cloud-hub not ready after {timeout_s}s:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code
