from __future__ import annotations

import pytest

from edge_agent.cloud.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, **kwargs: object) -> tuple[CircuitBreaker, list[BreakerState]]:
    changes: list[BreakerState] = []
    settings: dict[str, object] = {"failures": 3, "cooldown_s": 10.0, "half_open_probes": 1}
    settings.update(kwargs)
    breaker = CircuitBreaker(clock=clock, on_change=changes.append, **settings)  # type: ignore[arg-type]
    return breaker, changes


def test_opens_after_consecutive_failures_only(clock: Clock) -> None:
    breaker, changes = make(clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.allow()
    breaker.record_success()  # a success resets the count
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert changes == [BreakerState.OPEN]
    assert not breaker.allow()


def test_half_open_after_the_cooldown_lets_one_probe_through(clock: Clock) -> None:
    breaker, changes = make(clock, failures=1)
    breaker.allow()
    breaker.record_failure()
    clock.now_s += 9.9
    assert not breaker.allow()
    clock.now_s += 0.2
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_failed_probe_reopens_for_a_full_cooldown(clock: Clock) -> None:
    breaker, _ = make(clock, failures=2)
    for _ in range(2):
        breaker.allow()
        breaker.record_failure()
    clock.now_s += 10
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now_s += 9
    assert not breaker.allow()
    clock.now_s += 1
    assert breaker.allow()


def test_a_released_probe_frees_its_place(clock: Clock) -> None:
    breaker, _ = make(clock, failures=1, half_open_probes=2)
    breaker.allow()
    breaker.record_failure()
    clock.now_s += 10
    assert breaker.allow()
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()  # a probe that was never sent
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_late_success_does_not_close_an_open_breaker(clock: Clock) -> None:
    breaker, _ = make(clock, failures=1)
    assert breaker.allow()  # request A, still in flight
    assert breaker.allow()  # request B
    breaker.record_failure()  # B times out: open
    breaker.record_success()  # A's answer arrives after
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_state_is_reported_for_metrics(clock: Clock) -> None:
    breaker, _ = make(clock, failures=1)
    assert breaker.state.gauge == 0
    breaker.allow()
    breaker.record_failure()
    assert breaker.state.gauge == 2
    clock.now_s += 10
    assert breaker.state is BreakerState.HALF_OPEN  # reading the state moves it on
    assert breaker.state.gauge == 1
