"""The digits through the agent's local API, one request per digit, every answer recorded.

Latency is the caller's: from ``EdgeClient.infer`` called to the answer decoded, on a kept-alive
connection, one request at a time.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.client import EdgeClient
from edge_agent.confidence import confidence

from .services import INPUT_NAME, OUTPUT_NAME

WARMUP_REQUESTS = 3
"""Per model, before a pass, not recorded: the first cloud answer pays for connection set-up."""


@dataclass
class Pass:
    """One model's answers to every digit of the stream, in order."""

    model: str
    predictions: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    """The agent's own rule (``max_probability``) on the answer's scores."""
    latencies_s: list[float] = field(default_factory=list)
    served_by: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    """``fallback_reason``, ``""`` when none."""
    degraded: list[bool] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    """The answering model's version (the edge release, or the cloud model's)."""


def stream(
    client: EdgeClient, model: str, x: np.ndarray[Any, Any], prefix: str, *, warmup: bool = True
) -> Pass:
    for i in range(min(WARMUP_REQUESTS, len(x)) if warmup else 0):
        client.infer(model, {INPUT_NAME: x[i : i + 1]}, request_id=f"{prefix}-warmup-{i}")
    recorded = Pass(model=model)
    for i in range(len(x)):
        start = time.perf_counter()
        result = client.infer(model, {INPUT_NAME: x[i : i + 1]}, request_id=f"{prefix}-{i}")
        elapsed = time.perf_counter() - start
        scores = result.outputs[OUTPUT_NAME]
        recorded.predictions.append(int(np.argmax(scores[0])))
        recorded.confidences.append(confidence(scores, "max_probability"))
        recorded.latencies_s.append(elapsed)
        recorded.served_by.append(result.served_by or "")
        recorded.reasons.append(result.fallback_reason or "")
        recorded.degraded.append(result.degraded)
        recorded.versions.append(result.model_version)
    return recorded


@dataclass(frozen=True, kw_only=True)
class Recording:
    """The three passes over the same digits: hybrid, edge only, cloud only."""

    labels: list[int]
    hybrid: Pass
    edge: Pass
    cloud: Pass

    COLUMNS = (
        "index",
        "label",
        "served_by",
        "fallback_reason",
        "degraded",
        "hybrid_prediction",
        "hybrid_latency_ms",
        "edge_prediction",
        "edge_confidence",
        "edge_latency_ms",
        "cloud_prediction",
        "cloud_confidence",
        "cloud_latency_ms",
    )

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.COLUMNS)
            for i, label in enumerate(self.labels):
                writer.writerow(
                    [
                        i,
                        label,
                        self.hybrid.served_by[i],
                        self.hybrid.reasons[i],
                        int(self.hybrid.degraded[i]),
                        self.hybrid.predictions[i],
                        f"{self.hybrid.latencies_s[i] * 1e3:.4f}",
                        self.edge.predictions[i],
                        repr(self.edge.confidences[i]),
                        f"{self.edge.latencies_s[i] * 1e3:.4f}",
                        self.cloud.predictions[i],
                        repr(self.cloud.confidences[i]),
                        f"{self.cloud.latencies_s[i] * 1e3:.4f}",
                    ]
                )
