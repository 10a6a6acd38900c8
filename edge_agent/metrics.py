"""Prometheus metrics of the agent, in a registry of its own (never the global one), so tests and
embedding programs can run several agents in one process without clashing.

Label values are only ever configured model names (or ``_unknown``), never a name taken from a
request path, so a caller cannot grow the series without bound.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

from .addresses import TcpAddress
from .errors import ConfigError

__all__ = ["UNKNOWN_MODEL", "AgentMetrics", "MetricsServer", "ModelMetrics"]

logger = logging.getLogger(__name__)

UNKNOWN_MODEL = "_unknown"
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


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelMetrics:
    """One model's series, bound once so the request path does no label lookups."""

    requests_edge: Counter
    requests_cloud: Counter
    inference_edge: Histogram
    inference_cloud: Histogram
    http_seconds: Histogram
    degraded: Counter
    queued: Counter


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edge_agent_requests",
            "Inference requests answered, by model and where they were served.",
            ["model", "served_by"],
            registry=r,
        )
        self.errors = Counter(
            "edge_agent_request_errors",
            "Inference requests that failed, by model and kind of error.",
            ["model", "error"],
            registry=r,
        )
        self.inference_seconds = Histogram(
            "edge_agent_inference_seconds",
            "Time to answer an inference (input checks, waiting for a worker, running), by model.",
            ["model", "served_by"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.http_seconds = Histogram(
            "edge_agent_http_request_seconds",
            "Time to handle an HTTP inference request, from its headers to the last byte sent.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.runtime = Info("edge_agent_runtime", "The TFLite interpreter in use.", registry=r)
        self.models_loaded = Gauge(
            "edge_agent_models_loaded", "Models loaded and serving.", registry=r
        )
        self.model_ready = Gauge(
            "edge_agent_model_ready",
            "1 if the model serves, 0 if it is loading or failed.",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge(
            "edge_agent_in_flight_requests", "HTTP inference requests being handled.", registry=r
        )
        self.draining = Gauge(
            "edge_agent_draining",
            "1 once a stop was asked and in-flight requests finish.",
            registry=r,
        )
        self._add_fallback_metrics(r)
        self._add_update_metrics(r)
        self._models: dict[str, ModelMetrics] = {}
        self._fallbacks: dict[tuple[str, str], Counter] = {}

    def _add_fallback_metrics(self, r: CollectorRegistry) -> None:
        self.fallbacks = Counter(
            "edge_agent_fallback",
            "Requests the policy sent to the cloud, by model and reason (low_confidence, missing, "
            "latency_budget, always); over edge_agent_requests_total it is the upload ratio.",
            ["model", "reason"],
            registry=r,
        )
        self.degraded = Counter(
            "edge_agent_degraded_answers",
            "Requests meant for the cloud that were answered here because it was out of reach.",
            ["model"],
            registry=r,
        )
        self.queued = Counter(
            "edge_agent_queued_requests",
            "Requests put in the outbox (answered 202) because the cloud was out of reach.",
            ["model"],
            registry=r,
        )
        self.cloud_requests = Counter(
            "edge_agent_cloud_requests",
            "Cloud requests by outcome: answered, error (the hub answered an error), timeout, "
            "unavailable (not connected, breaker open, too many in flight).",
            ["outcome"],
            registry=r,
        )
        self.cloud_round_trip_seconds = Histogram(
            "edge_agent_cloud_round_trip_seconds",
            "From a cloud request's first send to its answer, retries included.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.cloud_in_flight = Gauge(
            "edge_agent_cloud_in_flight", "Cloud requests awaiting an answer.", registry=r
        )
        self.cloud_retries = Counter(
            "edge_agent_cloud_retries",
            "Cloud requests sent again with the same id (no answer in time, or a reconnect).",
            registry=r,
        )
        self.cloud_answers_dropped = Counter(
            "edge_agent_cloud_answers_dropped",
            "Cloud answers dropped: duplicate (the request had its answer), unknown (nobody "
            "waits for the id any more), malformed.",
            ["reason"],
            registry=r,
        )
        self.cloud_connected = Gauge(
            "edge_agent_cloud_connected", "1 while the cloud link is connected.", registry=r
        )
        self.cloud_disconnects = Counter(
            "edge_agent_cloud_disconnects", "Times the cloud link lost the broker.", registry=r
        )
        self.cloud_link_errors = Counter(
            "edge_agent_cloud_link_errors",
            "Exceptions caught in the cloud link, by where (send, timer, connect, message, "
            "callback): each failed one request at most, never the link.",
            ["where"],
            registry=r,
        )
        self.cloud_link_restarts = Counter(
            "edge_agent_cloud_link_restarts",
            "Cloud link threads the watchdog found dead and started again, by thread "
            "(network, timer).",
            ["thread"],
            registry=r,
        )
        self.cloud_last_answer = Gauge(
            "edge_agent_cloud_last_answer_timestamp_seconds",
            "Unix time of the last answer the cloud link received (0: none yet); its age is "
            "the link's real health, whatever the connection state says.",
            registry=r,
        )
        self.cloud_last_round_trip = Gauge(
            "edge_agent_cloud_last_round_trip_seconds",
            "Round trip of the last answered cloud request.",
            registry=r,
        )
        self.hub_online = Gauge(
            "edge_agent_cloud_hub_online",
            "1 while a hub's retained status on the broker says online, 0 when its Last Will "
            "says offline, -1 when no hub publishes a status.",
            registry=r,
        )
        self.hub_online.set(-1)
        self.cloud_breaker_state = Gauge(
            "edge_agent_cloud_breaker_state",
            "The cloud circuit breaker: 0 closed, 1 half-open, 2 open.",
            registry=r,
        )
        self.outbox_depth = Gauge(
            "edge_agent_outbox_depth",
            "Outbox rows: request (waiting for the cloud), answer (kept for the app), dead "
            "(failed max_failures times; kept for the app to see), telemetry.",
            ["kind"],
            registry=r,
        )
        self.outbox_dropped = Counter(
            "edge_agent_outbox_dropped",
            "What the outbox policy dropped, by kind (request, answer, telemetry) and reason "
            "(full, expired).",
            ["kind", "reason"],
            registry=r,
        )
        self.outbox_dead_letters = Counter(
            "edge_agent_outbox_dead_letters",
            "Queued requests moved to the dead-letter state after failing max_failures times "
            "in the link; GET /v2/requests/{id} reports them, /status counts them.",
            registry=r,
        )
        self.outbox_delivered = Counter(
            "edge_agent_outbox_delivered",
            "Outbox rows delivered: request (answered by the cloud), telemetry (acknowledged).",
            ["kind"],
            registry=r,
        )

    def _add_update_metrics(self, r: CollectorRegistry) -> None:
        self.update_rejections = Counter(
            "edge_agent_update_rejections",
            "Model releases refused, by model and reason (signature, expired, device_class, "
            "rollback, failed_before, format, size, sha256, smoke_test, malformed).",
            ["model", "reason"],
            registry=r,
        )
        self.updates = Counter(
            "edge_agent_updates",
            "Model updates by outcome: installed (swapped in), confirmed (healthy through the "
            "window), rolled_back.",
            ["model", "outcome"],
            registry=r,
        )
        self.model_version = Gauge(
            "edge_agent_model_version",
            "The version each model serves (0: the config's own file without a numeric version).",
            ["model"],
            registry=r,
        )
        self.update_in_progress = Gauge(
            "edge_agent_update_in_progress",
            "1 while a model's update downloads, is tested or is in its health window.",
            ["model"],
            registry=r,
        )

    def model(self, name: str) -> ModelMetrics:
        bound = self._models.get(name)
        if bound is None:
            bound = ModelMetrics(
                requests_edge=self.requests.labels(model=name, served_by="edge"),
                requests_cloud=self.requests.labels(model=name, served_by="cloud"),
                inference_edge=self.inference_seconds.labels(model=name, served_by="edge"),
                inference_cloud=self.inference_seconds.labels(model=name, served_by="cloud"),
                http_seconds=self.http_seconds.labels(model=name),
                degraded=self.degraded.labels(model=name),
                queued=self.queued.labels(model=name),
            )
            self._models[name] = bound
        return bound

    def fallback(self, model: str, reason: str) -> Counter:
        """The ``edge_agent_fallback_total`` child for a model and reason (bound once)."""
        key = (model, reason)
        child = self._fallbacks.get(key)
        if child is None:
            child = self._fallbacks[key] = self.fallbacks.labels(model=model, reason=reason)
        return child

    def error(self, model: str, kind: str) -> None:
        self.errors.labels(model=model, error=kind).inc()

    def set_runtime(self, name: str, version: str) -> None:
        self.runtime.info({"runtime": name, "version": version})


class MetricsServer:
    """``/metrics`` on its own TCP address, served by prometheus-client's thread."""

    def __init__(self, metrics: AgentMetrics, address: TcpAddress) -> None:
        try:
            self._server, self._thread = start_http_server(
                address.port, addr=address.host, registry=metrics.registry
            )
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
        self.port = int(self._server.server_port)
        logger.info("metrics on http://%s:%d/metrics", address.host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
