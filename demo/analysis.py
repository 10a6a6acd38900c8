"""The report's numbers, all computed from the recorded answers of one run.

The accuracy against the share sent to the cloud is a replay: for a threshold t, a digit whose
edge confidence (from the edge-only pass) is under t takes the cloud-only pass's answer, the
others the edge's, which is what the agent's ``on_low_confidence`` rule does. At the run's own
threshold the replay must reproduce what the agent did, digit by digit; the report says whether
it does. The quantum classifier's accuracy is the share of the iris answers that name the
row's class.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from .quantum import QuantumModel, QuantumPass
from .stream import Recording

REPLAY_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)


@dataclass(frozen=True, kw_only=True)
class Latency:
    count: int
    p50_ms: float | None
    p99_ms: float | None

    @staticmethod
    def of(seconds: list[float]) -> Latency:
        if not seconds:
            return Latency(count=0, p50_ms=None, p99_ms=None)
        ms = np.asarray(seconds) * 1e3
        return Latency(
            count=len(ms),
            p50_ms=float(np.percentile(ms, 50)),
            p99_ms=float(np.percentile(ms, 99)),
        )


@dataclass(frozen=True, kw_only=True)
class ReplayPoint:
    threshold: float
    cloud_share: float
    accuracy: float


@dataclass(frozen=True, kw_only=True)
class Summary:
    threshold: float
    requests: int
    edge_answers: int
    cloud_answers: int
    cloud_reasons: dict[str, int]
    """``fallback_reason`` of the answers from the cloud, counted."""
    degraded: int
    """Answers from the edge although the cloud was wanted (it was out of reach)."""
    accuracy_edge_only: float
    accuracy_cloud_only: float
    accuracy_hybrid: float
    latency_local: Latency
    """Hybrid pass, answered at the edge."""
    latency_fallback: Latency
    """Hybrid pass, answered in the cloud."""
    latency_edge_only: Latency
    latency_cloud_only: Latency
    replay: list[ReplayPoint]
    """At :data:`REPLAY_THRESHOLDS` and the run's threshold, sorted by threshold."""
    curve: list[ReplayPoint]
    """Every distinct cut of the edge confidences, for the plot."""
    replay_agrees: int
    """Digits whose live routing and answer equal the replay's at the run's threshold."""

    @property
    def edge_share(self) -> float:
        return self.edge_answers / self.requests

    @property
    def cloud_share(self) -> float:
        return self.cloud_answers / self.requests

    def as_dict(self) -> dict[str, Any]:
        def latency(value: Latency) -> dict[str, Any]:
            return {"count": value.count, "p50_ms": value.p50_ms, "p99_ms": value.p99_ms}

        def points(values: list[ReplayPoint]) -> list[dict[str, float]]:
            return [
                {"threshold": p.threshold, "cloud_share": p.cloud_share, "accuracy": p.accuracy}
                for p in values
            ]

        return {
            "threshold": self.threshold,
            "requests": self.requests,
            "edge_answers": self.edge_answers,
            "cloud_answers": self.cloud_answers,
            "edge_share": self.edge_share,
            "cloud_share": self.cloud_share,
            "cloud_reasons": dict(self.cloud_reasons),
            "degraded": self.degraded,
            "accuracy": {
                "edge_only": self.accuracy_edge_only,
                "cloud_only": self.accuracy_cloud_only,
                "hybrid": self.accuracy_hybrid,
            },
            "latency_ms": {
                "local": latency(self.latency_local),
                "fallback": latency(self.latency_fallback),
                "edge_only": latency(self.latency_edge_only),
                "cloud_only": latency(self.latency_cloud_only),
            },
            "replay": points(self.replay),
            "replay_agrees": self.replay_agrees,
        }


def _accuracy(predictions: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> float:
    return float(np.mean(predictions == labels))


def replay(recording: Recording, threshold: float) -> tuple[np.ndarray[Any, Any], ReplayPoint]:
    """The answers the rule gives at ``threshold`` (and the share and accuracy they make)."""
    labels = np.asarray(recording.labels)
    to_cloud = np.asarray(recording.edge.confidences) < threshold
    answers = np.where(
        to_cloud, np.asarray(recording.cloud.predictions), np.asarray(recording.edge.predictions)
    )
    point = ReplayPoint(
        threshold=threshold,
        cloud_share=float(np.mean(to_cloud)),
        accuracy=_accuracy(answers, labels),
    )
    return to_cloud, point


def summarize(recording: Recording, threshold: float) -> Summary:
    labels = np.asarray(recording.labels)
    hybrid = recording.hybrid
    served_cloud = np.asarray([s == "cloud" for s in hybrid.served_by])
    latencies = np.asarray(hybrid.latencies_s)
    reasons = Counter(r for r, at in zip(hybrid.reasons, served_cloud, strict=True) if at)

    to_cloud, _ = replay(recording, threshold)
    expected = np.where(
        to_cloud, np.asarray(recording.cloud.predictions), np.asarray(recording.edge.predictions)
    )
    agrees = (to_cloud == served_cloud) & (np.asarray(hybrid.predictions) == expected)

    cuts = sorted({*recording.edge.confidences, *REPLAY_THRESHOLDS, threshold, 1.0 + 1e-9})
    curve = [replay(recording, t)[1] for t in cuts]
    table = [replay(recording, t)[1] for t in sorted({*REPLAY_THRESHOLDS, threshold})]
    return Summary(
        threshold=threshold,
        requests=len(labels),
        edge_answers=int(np.sum(~served_cloud)),
        cloud_answers=int(np.sum(served_cloud)),
        cloud_reasons=dict(sorted(reasons.items())),
        degraded=int(sum(hybrid.degraded)),
        accuracy_edge_only=_accuracy(np.asarray(recording.edge.predictions), labels),
        accuracy_cloud_only=_accuracy(np.asarray(recording.cloud.predictions), labels),
        accuracy_hybrid=_accuracy(np.asarray(hybrid.predictions), labels),
        latency_local=Latency.of(latencies[~served_cloud].tolist()),
        latency_fallback=Latency.of(latencies[served_cloud].tolist()),
        latency_edge_only=Latency.of(recording.edge.latencies_s),
        latency_cloud_only=Latency.of(recording.cloud.latencies_s),
        replay=table,
        curve=curve,
        replay_agrees=int(np.sum(agrees)),
    )


@dataclass(frozen=True, kw_only=True)
class QuantumSummary:
    """The quantum classifier's numbers, from the answers recorded through the agent."""

    agent_model: str
    hub_model: str
    requests: int
    correct: int
    cloud_answers: int
    """Answers whose ``served_by`` is ``cloud`` (all of them, for a remote model)."""
    latency: Latency
    test_accuracy_at_training: float | None
    """From the model file: ``quantum train``'s own measure on the same rows."""
    max_iterations: int
    evaluations: int | None
    train_samples: int
    training_s: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.requests

    def as_dict(self) -> dict[str, Any]:
        return {
            "experimental": True,
            "answered_by": "the hub's quantum backend, a classical statevector simulator",
            "agent_model": self.agent_model,
            "hub_model": self.hub_model,
            "requests": self.requests,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "cloud_answers": self.cloud_answers,
            "latency_ms": {
                "count": self.latency.count,
                "p50_ms": self.latency.p50_ms,
                "p99_ms": self.latency.p99_ms,
            },
            "test_accuracy_at_training": self.test_accuracy_at_training,
            "training": {
                "optimizer": "cobyla",
                "max_iterations": self.max_iterations,
                "loss_evaluations": self.evaluations,
                "train_samples": self.train_samples,
                "duration_s": self.training_s,
            },
        }


def summarize_quantum(recorded: QuantumPass, model: QuantumModel, hub_model: str) -> QuantumSummary:
    return QuantumSummary(
        agent_model=recorded.model,
        hub_model=hub_model,
        requests=len(recorded.labels),
        correct=sum(p == y for p, y in zip(recorded.predictions, recorded.labels, strict=True)),
        cloud_answers=recorded.served_by.count("cloud"),
        latency=Latency.of(recorded.latencies_s),
        test_accuracy_at_training=model.test_accuracy,
        max_iterations=model.max_iterations,
        evaluations=model.evaluations,
        train_samples=model.train_samples,
        training_s=model.training_s,
    )
