"""Nothing lost, nothing doubled: request streams through a real agent while the broker or a hub
is killed, every request checked for exactly one, correct answer.

The cloud model is ``add_sub`` (OUTPUT0 = INPUT0 + INPUT1), reached as a remote model that queues
when the cloud is away, so request ``i`` (INPUT0 = i, INPUT1 = 1) must come back as ``i + 1``,
either at once (200) or, after a 202, from ``GET /v2/requests/{id}``. Outages are triggered by
progress (after so many answers), not by the clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from edge_agent.client import EdgeClient, InferResult
from edge_agent.errors import AgentError, QueuedError, ResponseError
from tests.support.broker import Broker
from tests.support.fallback import (
    AgentProcess,
    fallback_repository,
    hub_metric,
)
from tests.support.hub import HubProcess
from tests.support.models import DigitsModels, ensure_digits_models, require

pytestmark = pytest.mark.integration

CLIENTS = 8
WIDTH = 4


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    digits: DigitsModels = require(ensure_digits_models)
    return fallback_repository(tmp_path_factory.mktemp("repo"), digits)


@pytest.fixture
def agent(broker: Broker, tmp_path: Path) -> Iterator[AgentProcess]:
    process = AgentProcess(
        workdir=tmp_path / "agent",
        config={
            "device_id": "stream-device",
            "log_level": "WARNING",
            "models": [],
            "cloud": {
                "broker": broker.address,
                "retry_interval_s": 0.3,
                "reconnect_min_s": 0.05,
                "reconnect_max_s": 0.5,
                "breaker": {"failures": 1000},
                "telemetry_interval_s": 0.05,  # publishes racing the requests' acknowledgements
                "outbox": {"synchronous": "normal"},
                "remote_models": [
                    {
                        "name": "add",
                        "cloud_model": "add_sub",
                        "deadline_s": 10.0,
                        "on_cloud_unavailable": "queue",
                    }
                ],
            },
        },
    )
    process.start()
    yield process
    process.stop()


@dataclass
class Stream:
    """``total`` requests from ``CLIENTS`` threads; calls ``on_progress(answered)`` as answers
    come, so a test can break things mid-stream."""

    client: EdgeClient
    total: int
    on_progress: Callable[[int], None]
    answers: dict[str, InferResult] = field(default_factory=dict)
    queued: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(self._one, range(self.total)))
        for request_id in self.queued:  # the 202s: fetch their answers
            try:
                self._record(request_id, self.client.wait_result(request_id, timeout_s=120))
            except AgentError as exc:
                self.failures.append(f"{request_id}: {exc}")

    def _one(self, i: int) -> None:
        request_id = f"s{i}"
        inputs = {
            "INPUT0": np.full((1, WIDTH), i, np.float32),
            "INPUT1": np.ones((1, WIDTH), np.float32),
        }
        try:
            result = self.client.infer("add", inputs, request_id=request_id)
        except QueuedError as queued:
            with self._lock:
                self.queued.append(queued.request_id)
            return
        except AgentError as exc:
            with self._lock:
                self.failures.append(f"{request_id}: {exc}")
            return
        self._record(request_id, result)

    def _record(self, request_id: str, result: InferResult) -> None:
        with self._lock:
            if request_id in self.answers:
                self.duplicates.append(request_id)
            self.answers[request_id] = result
            answered = len(self.answers)
        self.on_progress(answered)

    def check(self) -> None:
        assert self.failures == []
        assert self.duplicates == []
        assert sorted(self.answers) == sorted(f"s{i}" for i in range(self.total))
        for request_id, result in self.answers.items():
            i = int(request_id[1:])
            assert result.id == request_id
            assert result.served_by == "cloud"
            np.testing.assert_array_equal(result.outputs["OUTPUT0"], np.full((1, WIDTH), i + 1.0))
            np.testing.assert_array_equal(result.outputs["OUTPUT1"], np.full((1, WIDTH), i - 1.0))
        if self.queued:  # a request answered at once was never queued as well
            answered_at_once = next(r for r in self.answers if r not in set(self.queued))
            with pytest.raises(ResponseError) as unknown:
                self.client.result(answered_at_once)
            assert unknown.value.status == 404


class Trigger:
    """Runs ``action`` once each time the answer count passes one of ``at`` (in order)."""

    def __init__(self, at: list[int], action: Callable[[], None]) -> None:
        self._at = list(at)
        self._action = action
        self._lock = threading.Lock()
        self.fired = 0

    def __call__(self, answered: int) -> None:
        with self._lock:
            if not self._at or answered < self._at[0]:
                return
            self._at.pop(0)
            self._action()
            self.fired += 1


def test_broker_killed_five_times_during_2000_requests_loses_and_doubles_nothing(
    broker: Broker, hubs: Callable[[Broker], HubProcess], agent: AgentProcess
) -> None:
    hubs(broker)

    def kill_and_restart_broker() -> None:
        assert broker.process is not None
        broker.process.kill()
        broker.process.wait()
        broker.start()  # same port

    trigger = Trigger([150, 450, 750, 1050, 1350], kill_and_restart_broker)
    with agent.client(timeout_s=60) as client:
        stream = Stream(client=client, total=2000, on_progress=trigger)
        stream.run()
        stream.check()
    assert trigger.fired == 5
    assert agent.metric("edge_agent_cloud_disconnects_total") >= 5
    assert agent.metric('edge_agent_outbox_delivered_total{kind="telemetry"}') > 0
    assert agent.metric("edge_agent_cloud_retries_total") > 0
    duplicate = agent.metric('edge_agent_cloud_answers_dropped_total{reason="duplicate"}')
    unknown = agent.metric('edge_agent_cloud_answers_dropped_total{reason="unknown"}')
    retries = agent.metric("edge_agent_cloud_retries_total")
    print(
        f"2000 requests, 5 broker kills: {len(stream.queued)} queued (202) and fetched later, "
        f"{retries:.0f} sends repeated, {duplicate + unknown:.0f} extra answers dropped"
    )


def test_two_hubs_share_the_stream_and_one_killed_loses_nothing(
    broker: Broker, hubs: Callable[[Broker], HubProcess], agent: AgentProcess
) -> None:
    first = hubs(broker)
    second = hubs(broker)
    served_by_first: list[float] = []

    def kill_first_hub() -> None:
        served_by_first.append(hub_metric(first, 'hub_mqtt_requests_total{outcome="answered"}'))
        assert first.process is not None
        first.process.kill()

    trigger = Trigger([400], kill_first_hub)
    with agent.client(timeout_s=60) as client:
        stream = Stream(client=client, total=1000, on_progress=trigger)
        stream.run()
        stream.check()
    first.process = None  # already dead
    assert trigger.fired == 1
    assert served_by_first[0] > 0
    assert hub_metric(second, 'hub_mqtt_requests_total{outcome="answered"}') > 0
    print(
        f"first hub answered {served_by_first[0]:.0f} before it was killed; "
        f"{len(stream.queued)} requests queued (202) and fetched later"
    )
