"""Telemetry: every ``telemetry_interval_s``, the agent's counters and gauges as one
``protocols.Telemetry`` message, put in the outbox (so it survives an outage) for delivery.

Keys are the Prometheus series names with their labels, ``name{label=value,...}``; histograms
give their ``_count`` and ``_sum``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from protocols import Telemetry

__all__ = ["TelemetryReporter", "telemetry_message"]

logger = logging.getLogger(__name__)


def _key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def telemetry_message(
    device_id: str, registry: CollectorRegistry, *, interval_s: float | None = None
) -> bytes:
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            counted = (family.type == "counter" and sample.name.endswith("_total")) or (
                family.type == "histogram" and sample.name.endswith(("_count", "_sum"))
            )
            if counted:
                counters[_key(sample.name, sample.labels)] = float(sample.value)
            elif family.type == "gauge":
                gauges[_key(sample.name, sample.labels)] = float(sample.value)
    message = Telemetry(
        device_id=device_id,
        timestamp_s=time.time(),
        interval_s=interval_s,
        counters=counters,
        gauges=gauges,
    )
    return message.model_dump_json(exclude_none=True).encode("utf-8")


class TelemetryReporter:
    """Calls ``sink(make())`` every ``interval_s`` on a thread of its own."""

    def __init__(
        self, *, interval_s: float, make: Callable[[], bytes], sink: Callable[[bytes], None]
    ) -> None:
        self._interval_s = interval_s
        self._make = make
        self._sink = sink
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cloud-telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._sink(self._make())
            except Exception:
                logger.exception("telemetry could not be queued")
