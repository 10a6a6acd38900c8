"""Fault injection with real processes: the broker, the hub and the agent SIGKILLed and
restarted, and a slow, lossy link between agent and broker, while a stream of QoS 1 requests
runs. Every request must come back exactly once with its own correct answer; the figures count
what was lost, duplicated to the app, and answered late (202, fetched from the outbox).

Sizes: ``sized(ci, full)``; ``HYBRID_RELIABILITY_SCALE=full`` runs 10,000 requests through 20
broker kills.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from edge_agent.errors import QueuedError
from tests.reliability.conftest import record, sized
from tests.reliability.traffic import TimedStream, Trigger, evenly
from tests.support.broker import Broker
from tests.support.fallback import AgentProcess, hub_metric, wait_hub_connected
from tests.support.hub import HubProcess
from tests.support.proxy import LossyProxy

pytestmark = pytest.mark.integration


def _assert_clean(figures: dict[str, object]) -> None:
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert figures["wrong"] == 0
    assert figures["failed"] == 0


def test_broker_sigkilled_and_restarted_during_qos1_stream(
    broker: Broker,
    hubs: Callable[[Broker], HubProcess],
    agents: Callable[..., AgentProcess],
) -> None:
    total, kills = sized(2000, 10_000), sized(6, 20)
    hub = hubs(broker)
    agent = agents(broker.address)

    def kill_and_restart_broker() -> None:
        assert broker.process is not None
        broker.process.kill()
        broker.process.wait()
        broker.start()  # same port

    trigger = Trigger(evenly(total, kills), kill_and_restart_broker)
    started = time.monotonic()
    with agent.client(timeout_s=60) as client:
        stream = TimedStream(client=client, total=total, on_progress=trigger)
        stream.run()
    figures = stream.figures()
    record(
        "broker_sigkill",
        faults=trigger.fired,
        wall_s=round(time.monotonic() - started, 1),
        disconnects=agent.metric("edge_agent_cloud_disconnects_total"),
        resent=agent.metric("edge_agent_cloud_retries_total"),
        answers_dropped=agent.metric('edge_agent_cloud_answers_dropped_total{reason="duplicate"}')
        + agent.metric('edge_agent_cloud_answers_dropped_total{reason="unknown"}'),
        hub_dedup=hub_metric(hub, 'hub_mqtt_requests_total{outcome="duplicate"}'),
        **figures,
    )
    _assert_clean(figures)
    assert trigger.fired == kills
    assert agent.metric("edge_agent_cloud_disconnects_total") >= kills


def test_hub_sigkilled_and_restarted_during_stream(
    broker: Broker,
    hubs: Callable[[Broker], HubProcess],
    agents: Callable[..., AgentProcess],
) -> None:
    """The only hub dies mid-stream: requests wait their deadline, queue, and drain once a new
    hub process is up on the same broker."""
    total, kills = sized(300, 2000), sized(1, 3)
    hub = hubs(broker)
    agent = agents(broker.address, remote_models=[_remote(deadline_s=2.0)])
    downtime_s: list[float] = []

    def kill_and_restart_hub() -> None:
        assert hub.process is not None
        hub.process.kill()
        hub.process.wait()
        hub.process = None
        down = time.monotonic()
        time.sleep(2.5)  # longer than the deadline: some requests time out and queue
        hub.start()
        wait_hub_connected(hub)
        downtime_s.append(time.monotonic() - down)

    trigger = Trigger(evenly(total, kills, start=0.2, end=0.7), kill_and_restart_hub)
    with agent.client(timeout_s=60) as client:
        stream = TimedStream(client=client, total=total, on_progress=trigger)
        stream.run()
    figures = stream.figures()
    record(
        "hub_sigkill",
        faults=trigger.fired,
        hub_down_s=[round(d, 1) for d in downtime_s],
        resent=agent.metric("edge_agent_cloud_retries_total"),
        **figures,
    )
    _assert_clean(figures)
    assert trigger.fired == kills


def test_agent_sigkilled_while_its_outbox_holds_work(
    broker: Broker,
    hubs: Callable[[Broker], HubProcess],
    agents: Callable[..., AgentProcess],
) -> None:
    """Requests queued (202) while the broker is away, the agent SIGKILLed, the broker back, the
    agent started again on the same data dir: every queued request is answered once, correctly,
    and a repeat of a queued id is not queued twice."""
    total = sized(200, 2000)
    hubs(broker)
    agent = agents(broker.address)
    assert broker.process is not None
    broker.process.kill()
    broker.process.wait()
    deadline = time.monotonic() + 20
    while agent.metric("edge_agent_cloud_connected") != 0.0:
        assert time.monotonic() < deadline, "the agent never noticed the broker was gone"
        time.sleep(0.05)

    queued: list[str] = []
    with agent.client(timeout_s=30) as client:
        for i in range(total):
            try:
                client.infer("add", _inputs(i), request_id=f"q{i}")
            except QueuedError as exc:
                queued.append(exc.request_id)
        with pytest.raises(QueuedError):  # the same id again: still the one queued request
            client.infer("add", _inputs(0), request_id="q0")
    pending = agent.metric('edge_agent_outbox_depth{kind="request"}')
    agent.kill()
    broker.start()
    agent.start()

    answers: dict[str, np.ndarray] = {}
    duplicated = 0
    started = time.monotonic()
    with agent.client(timeout_s=30) as client:
        for request_id in queued:
            result = client.wait_result(request_id, timeout_s=120)
            duplicated += request_id in answers
            answers[request_id] = result.outputs["OUTPUT0"]
    drain_s = time.monotonic() - started
    wrong = sum(
        not np.array_equal(out, np.full((1, 4), int(rid[1:]) + 1.0)) for rid, out in answers.items()
    )
    record(
        "agent_sigkill_outbox",
        requests=total,
        queued=len(queued),
        outbox_pending_at_kill=pending,
        answered=len(answers),
        lost=len(queued) - len(answers),
        duplicated=duplicated,
        wrong=wrong,
        drain_after_restart_s=round(drain_s, 2),
    )
    assert len(queued) == total
    assert pending >= total  # the kill hit a full outbox
    assert len(answers) == total
    assert duplicated == 0
    assert wrong == 0


def test_slow_lossy_link_between_agent_and_broker(
    broker: Broker,
    hubs: Callable[[Broker], HubProcess],
    agents: Callable[..., AgentProcess],
) -> None:
    """The agent reaches the broker through a proxy that delays every chunk 5-25 ms and cuts the
    connection at random (about one chunk in 300): reconnects, resends and dedup keep every
    answer exactly once."""
    total = sized(1000, 5000)
    hubs(broker)
    proxy = LossyProxy(broker.host, broker.port, delay_s=0.005, jitter_s=0.02, seed=7)
    proxy.start()
    try:
        agent = agents(proxy.address)
        proxy.drop_p = 1 / 300
        cuts_by_hand = 0
        lock = threading.Lock()

        def cut() -> None:  # a cut is certain to happen, whatever the random draws
            nonlocal cuts_by_hand
            with lock:
                cuts_by_hand += proxy.cut_all()

        trigger = Trigger(evenly(total, 2, start=0.3, end=0.6), cut)
        with agent.client(timeout_s=60) as client:
            stream = TimedStream(client=client, total=total, on_progress=trigger)
            stream.run()
        figures = stream.figures()
        record(
            "lossy_link",
            link_cuts=proxy.stats.cut + cuts_by_hand,
            connections=proxy.stats.connections,
            delay_ms="5-25",
            resent=agent.metric("edge_agent_cloud_retries_total"),
            **figures,
        )
        _assert_clean(figures)
        assert proxy.stats.connections >= 2  # it did reconnect
    finally:
        proxy.stop()


def _remote(**overrides: object) -> dict[str, object]:
    return {
        "name": "add",
        "cloud_model": "add_sub",
        "deadline_s": 10.0,
        "on_cloud_unavailable": "queue",
        **overrides,
    }


def _inputs(i: int) -> dict[str, np.ndarray]:
    return {
        "INPUT0": np.full((1, 4), i, np.float32),
        "INPUT1": np.ones((1, 4), np.float32),
    }
