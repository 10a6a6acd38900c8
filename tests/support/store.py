"""Shared stores for hub replicas in tests: a folder, or a bucket on an S3 API server process.

The S3 server is moto's standalone server (``python -m moto.server``), which speaks the S3 REST
API over HTTP, conditional writes (``If-None-Match``) included; the hub reaches it by endpoint
as it would MinIO or AWS, with credentials from the standard AWS environment variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.broker import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "hub-test-key",
    "AWS_SECRET_ACCESS_KEY": "hub-test-secret-0123456789",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "s3.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=log,
                env={**os.environ, **CREDENTIALS},
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the S3 server exited: {(self.workdir / 's3.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise TimeoutError("the S3 server did not start")

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass(frozen=True)
class SharedStore:
    """What every replica's settings name: ``config`` (the ``store:`` section) and ``env``."""

    kind: str
    config: dict[str, Any]
    env: dict[str, str]
    folder: Path | None = None


def filesystem_store(folder: Path) -> SharedStore:
    folder.mkdir(parents=True, exist_ok=True)
    return SharedStore(
        kind="filesystem", config={"kind": "filesystem", "path": str(folder)}, env={}, folder=folder
    )


def s3_store(server: S3Server, bucket: str, prefix: str = "hub") -> SharedStore:
    server.create_bucket(bucket)
    return SharedStore(
        kind="s3",
        config={
            "kind": "s3",
            "bucket": bucket,
            "prefix": prefix,
            "endpoint_url": server.endpoint,
            "addressing_style": "path",
        },
        env=dict(CREDENTIALS),
    )
