"""Request streams for the fault tests: the fallback outage tests' ``Stream``, timed, and the
figures the suite reports (lost, duplicated to the app, wrong, answered late)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.integration.test_fallback_outages import WIDTH, Stream, Trigger

__all__ = ["TimedStream", "Trigger", "evenly", "percentile_ms"]


@dataclass
class TimedStream(Stream):
    """``Stream`` that also keeps each request's time to its first HTTP answer (200 or 202)."""

    latencies_s: list[float] = field(default_factory=list)

    def _one(self, i: int) -> None:
        start = time.monotonic()
        super()._one(i)
        elapsed = time.monotonic() - start
        with self._lock:
            self.latencies_s.append(elapsed)

    def figures(self) -> dict[str, Any]:
        """What happened to the stream; ``lost``, ``duplicated``, ``wrong``, ``failed`` should
        all be 0."""
        expected = {f"s{i}" for i in range(self.total)}
        wrong = 0
        for request_id, result in self.answers.items():
            i = int(request_id[1:])
            good = (
                result.id == request_id
                and result.served_by == "cloud"
                and np.array_equal(result.outputs["OUTPUT0"], np.full((1, WIDTH), i + 1.0))
                and np.array_equal(result.outputs["OUTPUT1"], np.full((1, WIDTH), i - 1.0))
            )
            wrong += not good
        return {
            "requests": self.total,
            "answered": len(expected & set(self.answers)),
            "lost": len(expected - set(self.answers)),
            "duplicated": len(self.duplicates),
            "wrong": wrong,
            "failed": len(self.failures),
            "late_202": len(self.queued),
            "p50_ms": percentile_ms(self.latencies_s, 50),
            "p99_ms": percentile_ms(self.latencies_s, 99),
            "max_ms": percentile_ms(self.latencies_s, 100),
        }


def percentile_ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)) * 1000, 1) if samples else float("nan")


def evenly(total: int, count: int, *, start: float = 0.05, end: float = 0.85) -> list[int]:
    """``count`` answer counts spread over ``[start, end]`` of ``total``, for a ``Trigger``."""
    if count == 1:
        return [int(total * (start + end) / 2)]
    step = (end - start) / (count - 1)
    return [int(total * (start + k * step)) for k in range(count)]
