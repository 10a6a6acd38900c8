"""What one demo run does, and where it keeps its cache, work folder and report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / ".cache" / "demo"
DEFAULT_REPORT = Path("demo-report")
DEFAULT_THRESHOLD = 0.9
EDGE_PROFILE = "rpi4-litert-fp16"
CLOUD_PROFILE = "cloud-cpu-onnx"
DEFAULT_QUANTUM_ITERATIONS = 100
"""COBYLA iterations for the iris VQC: about half a minute on a 2-core machine; the accuracy
docs/quantum.md reports needed 1,000."""


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    cache_dir: Path = DEFAULT_CACHE
    """Trained and converted models; reused while their recipe is unchanged."""
    report_dir: Path = DEFAULT_REPORT
    work_dir: Path | None = None
    """Where the broker, hub and agent keep their files and logs; a fresh temporary folder when
    unset (removed after a successful run, kept after a failure)."""
    limit: int | None = None
    """Stream only the first ``limit`` digits of the test set (all of them when unset)."""
    threshold: float = DEFAULT_THRESHOLD
    """The agent's ``on_low_confidence`` threshold on the edge model's top probability."""
    stop_timeout_s: float = 15.0
    """How long a process may take to stop after SIGTERM before it is killed."""
    start_timeout_s: float = 90.0
    """How long the hub and the agent may take to become ready."""
    broker: Literal["auto", "mosquitto", "amqtt"] = "auto"
    """Mosquitto (MQTT 5) when installed, else the embedded amqtt (MQTT 3.1.1); or either one."""
    quantum_iterations: int = DEFAULT_QUANTUM_ITERATIONS
    """The iris VQC's training budget; each budget is trained once and cached."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")
        if not 0 < self.threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        if self.quantum_iterations < 1:
            raise ValueError("quantum_iterations must be at least 1")
