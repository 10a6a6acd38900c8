"""The agent: builds the parts from a config, starts them in order, and stops them with a drain.

Start order: data dir, runtime, metrics endpoint, local API socket (so a busy port fails fast),
the cloud link (outbox opened, connecting in the background), then the models, which may take a
while; until they are loaded the API answers ``ready: false``.
Stop order: close the request gate (new requests get 503), wait for in-flight requests, close the
cloud link (offline status published; the outbox stays on disk), then the servers and
interpreters.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from types import FrameType
from typing import Any

from protocols import DeviceState, DeviceStatus

from .addresses import TcpAddress, UnixAddress
from .api import ApiContext, ApiServer
from .cloud.gateway import CloudGateway
from .config import AgentConfig
from .errors import AgentError, ConfigError
from .lifecycle import RequestGate
from .loader import ModelLoader
from .metrics import AgentMetrics, MetricsServer
from .registry import ModelRegistry, ModelState, ModelStatus
from .router import Router
from .runtime import RuntimeInfo, select_runtime
from .systemd import notify
from .updater import Updater, recover_models

__all__ = ["SERVER_NAME", "Agent", "CheckReport", "agent_version", "check", "run"]

logger = logging.getLogger(__name__)

SERVER_NAME = "edge-agent"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def agent_version() -> str:
    try:
        return metadata.version("hybrid-inference")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Agent:
    """One running agent. ``start`` then ``stop``; or use it as a context manager."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        recovered = (
            recover_models(config.data_dir, config.models) if config.updates is not None else {}
        )
        self.registry = ModelRegistry(
            [recovered[m.name].config if m.name in recovered else m for m in config.models]
        )
        self.cloud: CloudGateway | None = None
        if config.cloud is not None:
            self.cloud = CloudGateway(
                config.cloud,
                device_id=config.device_id,
                data_dir=config.data_dir,
                metrics=self.metrics,
                status=self._status_payload,
            )
        self.router = Router(
            self.registry,
            self.metrics,
            self.cloud,
            remote_models=config.cloud.remote_models if config.cloud is not None else (),
            device_parameters={
                "device_class": config.device_class,
                **({"capture": False} if config.capture_opt_out else {}),
            },
        )
        self.gate = RequestGate()
        self.updater: Updater | None = None
        if config.updates is not None:
            self.updater = Updater(
                config.updates,
                device_class=config.device_class,
                data_dir=config.data_dir,
                base_configs=config.models,
                recovered=recovered,
                registry=self.registry,
                loader=lambda: self.loader,
                metrics=self.metrics,
                on_change=self._updates_changed,
            )
        self.runtime: RuntimeInfo | None = None
        self.runtime_error: str | None = None
        self.loader: ModelLoader | None = None
        """Built once the runtime is chosen; loads models for the registry and the updater."""
        self._api: ApiServer | None = None
        self._metrics_server: MetricsServer | None = None
        self._stopped = False

    @property
    def api_address(self) -> TcpAddress | UnixAddress:
        if self._api is None:
            raise AgentError("the agent is not started")
        return self._api.address

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics_server is None else self._metrics_server.port

    def start(self) -> None:
        """Bring everything up; models that fail to load are reported, not raised."""
        self._prepare_data_dir()
        self._select_runtime()
        try:
            metrics_address = self.config.metrics
            if metrics_address is not None:
                self._metrics_server = MetricsServer(self.metrics, metrics_address)
            self._api = ApiServer(self.config.api, self._api_context())
            if self.cloud is not None:
                self.cloud.start()
            self._api.start()
            self.registry.load_all(self.loader, runtime_error=self.runtime_error)
        except BaseException:
            self._close_cloud()
            self._close_servers()
            raise
        self._update_model_gauges()
        if self.updater is not None and self.cloud is not None and self.cloud.link is not None:
            self.updater.start()
            self.cloud.link.add_subscription(self.updater.topic, self.updater.offer)
        if self.cloud is not None:
            self.cloud.publish_status()
        loaded = sum(1 for s in self.registry.statuses() if s.state is ModelState.READY)
        logger.info(
            "edge agent %s serving %d of %d model(s) on runtime %s",
            self.config.device_id,
            loaded,
            len(self.config.models),
            self.runtime.name if self.runtime else "(none)",
        )
        notify("READY=1")

    def stop(self, drain_timeout_s: float | None = None) -> bool:
        """Drain in-flight requests, then close everything. ``False`` if the drain timed out."""
        if self._stopped:
            return True
        self._stopped = True
        timeout_s = self.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        notify("STOPPING=1")
        self.metrics.draining.set(1)
        in_flight = self.gate.in_flight
        logger.info("draining: %d request(s) in flight, waiting up to %g s", in_flight, timeout_s)
        started = time.monotonic()
        drained = self.gate.drain(timeout_s)
        if drained:
            logger.info("drained in %.3f s", time.monotonic() - started)
        else:
            logger.warning(
                "%d request(s) still in flight after %g s; stopping anyway",
                self.gate.in_flight,
                timeout_s,
            )
        if self.updater is not None:
            self.updater.stop()
        self._close_cloud()
        self._close_servers()
        self.registry.close()
        return drained

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def status(self) -> dict[str, Any]:
        """Local status, shaped as the ``DeviceStatus`` message the agent publishes."""
        return self._status_message(DeviceState.ONLINE).model_dump(mode="json")

    def _status_payload(self, state: DeviceState) -> bytes:
        return self._status_message(state).model_dump_json(exclude_none=True).encode("utf-8")

    def _status_message(self, state: DeviceState) -> DeviceStatus:
        statuses = self.registry.statuses()
        detail: dict[str, Any] = {
            "runtime_version": self.runtime.version if self.runtime else None,
            "runtime_error": self.runtime_error,
            "draining": self.gate.draining,
            "in_flight": self.gate.in_flight,
            "models": {s.name: _model_detail(s) for s in statuses},
        }
        if self.cloud is not None:
            detail["cloud"] = self.cloud.detail()
        if self.updater is not None:
            detail["updates"] = self.updater.detail()
        return DeviceStatus(
            device_id=self.config.device_id,
            timestamp_s=time.time(),
            state=state,
            device_class=self.config.device_class,
            agent_version=agent_version(),
            runtime=self.runtime.name if self.runtime else None,
            models=[s.name for s in statuses if s.state is ModelState.READY],
            detail=detail,
        )

    def _updates_changed(self) -> None:
        """An update moved on: publish the retained status so the fleet sees it."""
        if self.cloud is not None and not self._stopped:
            self.cloud.publish_status()

    def _api_context(self) -> ApiContext:
        return ApiContext(
            registry=self.registry,
            router=self.router,
            metrics=self.metrics,
            gate=self.gate,
            limits=self.config.limits,
            server_name=SERVER_NAME,
            server_version=agent_version(),
            status=self.status,
            idle_timeout_s=self.config.idle_timeout_s,
            max_connections=self.config.max_connections,
            header_timeout_s=self.config.header_timeout_s,
            body_min_bytes_per_s=self.config.body_min_bytes_per_s,
        )

    def _prepare_data_dir(self) -> None:
        try:
            self.config.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"data_dir {self.config.data_dir} cannot be created: {exc.strerror or exc}"
            ) from exc

    def _select_runtime(self) -> None:
        try:
            self.runtime = select_runtime(self.config.runtime)
        except AgentError as exc:
            self.runtime_error = str(exc)
            logger.error("%s", exc)
            return
        self.loader = ModelLoader.for_agent(self.config, self.runtime)
        self.metrics.set_runtime(self.runtime.name, self.runtime.version)

    def _update_model_gauges(self) -> None:
        ready = 0
        for status in self.registry.statuses():
            is_ready = status.state is ModelState.READY
            ready += is_ready
            self.metrics.model_ready.labels(model=status.name).set(1 if is_ready else 0)
        self.metrics.models_loaded.set(ready)

    def _close_cloud(self) -> None:
        if self.cloud is not None:
            self.cloud.stop()

    def _close_servers(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None


def _model_detail(status: ModelStatus) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "state": status.state.value,
        "version": status.version,
        "path": status.path,
    }
    if status.error is not None:
        detail["error"] = status.error
    return detail


def run(config: AgentConfig) -> int:
    """Serve until SIGTERM or SIGINT, drain, and return the exit code (0 after a drain)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    agent = Agent(config)
    try:
        agent.start()
        while not stop.wait(0.5):
            pass
        agent.stop()
    finally:
        agent.stop(drain_timeout_s=0)  # no-op after a clean stop; closes sockets on errors
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckReport:
    runtime: RuntimeInfo | None
    runtime_error: str | None
    models: tuple[ModelStatus, ...]

    @property
    def ok(self) -> bool:
        return self.runtime is not None and all(m.state is ModelState.READY for m in self.models)


def check(config: AgentConfig) -> CheckReport:
    """Load every model as ``run`` would (with warm-up), without serving; then close them."""
    registry = ModelRegistry(config.models)
    runtime: RuntimeInfo | None = None
    runtime_error: str | None = None
    try:
        runtime = select_runtime(config.runtime)
    except AgentError as exc:
        runtime_error = str(exc)
    registry.load_all(
        None if runtime is None else ModelLoader.for_agent(config, runtime),
        runtime_error=runtime_error,
    )
    report = CheckReport(runtime=runtime, runtime_error=runtime_error, models=registry.statuses())
    registry.close()
    return report
