"""Prometheus metrics and Triton-style statistics, per model and version.

Each hub owns a :class:`HubMetrics` with its own registry (several hubs in one process, as in
tests, do not collide). :class:`VersionStats` is the observer one model version's batcher reports
to; it feeds both the metrics and the ``/v2/models/{m}/stats`` counters.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .batcher import BatchObserver

__all__ = ["LATENCY_BUCKETS_S", "HubMetrics", "VersionStats"]

LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Histogram buckets of every latency the hub measures, HTTP and MQTT alike: 100 µs to 10 s."""
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model", "version"]
        r = self.registry
        self.request_success = Counter(
            "hub_request_success", "Inference requests answered", labels, registry=r
        )
        self.request_failure = Counter(
            "hub_request_failure",
            "Inference requests that failed, by reason",
            [*labels, "reason"],
            registry=r,
        )
        self.inference_count = Counter(
            "hub_inference_count", "Inferences run (batch items, not batches)", labels, registry=r
        )
        self.execution_count = Counter(
            "hub_execution_count", "Batches run by the backend", labels, registry=r
        )
        self.request_duration = Histogram(
            "hub_request_duration_seconds",
            "End-to-end time of a request in the hub",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_duration = Histogram(
            "hub_queue_duration_seconds",
            "Time a request waited for its batch",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.compute_duration = Histogram(
            "hub_compute_duration_seconds",
            "Time the backend took per batch",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "hub_batch_size", "Items per executed batch", labels, buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "hub_queue_depth", "Requests waiting in the batching queue", labels, registry=r
        )
        self.cache_hits = Counter(
            "hub_cache_hits", "Requests answered from the response cache", labels, registry=r
        )
        self.cache_misses = Counter(
            "hub_cache_misses", "Cacheable requests that missed", labels, registry=r
        )
        self.model_loaded = Gauge(
            "hub_model_loaded", "1 for each model version being served", labels, registry=r
        )
        self.models_loaded = Gauge("hub_models_loaded", "Model versions being served", registry=r)
        self.rejected = Counter(
            "hub_http_rejected",
            "HTTP requests refused before reaching a model, by reason",
            ["reason"],
            registry=r,
        )


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _Stats:
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    cache_hit: _Duration = field(default_factory=_Duration)
    cache_miss: _Duration = field(default_factory=_Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, _Duration] = field(default_factory=dict)


class VersionStats(BatchObserver):
    """Counters of one model version, kept for ``/stats`` and mirrored into Prometheus."""

    def __init__(self, metrics: HubMetrics, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self._m = metrics
        self._labels = {"model": model, "version": version}
        self._lock = threading.Lock()
        self._stats = _Stats()
        # The per-request series, looked up once (``labels()`` costs a lock and a dict per call).
        self._queue_depth = metrics.queue_depth.labels(**self._labels)
        self._inference_count = metrics.inference_count.labels(**self._labels)
        self._execution_count = metrics.execution_count.labels(**self._labels)
        self._compute_duration = metrics.compute_duration.labels(**self._labels)
        self._batch_size = metrics.batch_size.labels(**self._labels)
        self._queue_duration = metrics.queue_duration.labels(**self._labels)
        self._request_success = metrics.request_success.labels(**self._labels)
        self._request_duration = metrics.request_duration.labels(**self._labels)

    def queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)

    def executed(
        self, *, batch_size: int, requests: int, queue_s: list[float], compute_s: float
    ) -> None:
        self._inference_count.inc(batch_size)
        self._execution_count.inc()
        self._compute_duration.observe(compute_s)
        self._batch_size.observe(batch_size)
        for seconds in queue_s:
            self._queue_duration.observe(seconds)
        with self._lock:
            s = self._stats
            s.inference_count += batch_size
            s.execution_count += 1
            s.compute_infer.add(compute_s, requests)
            for seconds in queue_s:
                s.queue.add(seconds)
            s.batches.setdefault(batch_size, _Duration()).add(compute_s)
            s.last_inference_ms = int(time.time() * 1000)

    def rejected(self, reason: str) -> None:
        self.failed(reason, 0.0)

    def succeeded(self, seconds: float) -> None:
        self._request_success.inc()
        self._request_duration.observe(seconds)
        with self._lock:
            self._stats.success.add(seconds)

    def failed(self, reason: str, seconds: float) -> None:
        self._m.request_failure.labels(**self._labels, reason=reason).inc()
        with self._lock:
            self._stats.fail.add(seconds)

    def cache(self, hit: bool, seconds: float) -> None:
        (self._m.cache_hits if hit else self._m.cache_misses).labels(**self._labels).inc()
        with self._lock:
            (self._stats.cache_hit if hit else self._stats.cache_miss).add(seconds)
            if hit:
                self._stats.last_inference_ms = int(time.time() * 1000)

    def loaded(self, loaded: bool) -> None:
        gauge = self._m.model_loaded.labels(**self._labels)
        if loaded:
            gauge.set(1)
        else:
            gauge.set(0)
            self._queue_depth.set(0)

    def as_json(self) -> dict[str, Any]:
        """One entry of Triton's ``model_stats`` list."""
        with self._lock:
            s = self._stats
            return {
                "name": self.model,
                "version": self.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": s.success.as_json(),
                    "fail": s.fail.as_json(),
                    "queue": s.queue.as_json(),
                    "compute_input": {"count": 0, "ns": 0},
                    "compute_infer": s.compute_infer.as_json(),
                    "compute_output": {"count": 0, "ns": 0},
                    "cache_hit": s.cache_hit.as_json(),
                    "cache_miss": s.cache_miss.as_json(),
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": {"count": 0, "ns": 0},
                        "compute_infer": d.as_json(),
                        "compute_output": {"count": 0, "ns": 0},
                    }
                    for size, d in sorted(s.batches.items())
                ],
            }
