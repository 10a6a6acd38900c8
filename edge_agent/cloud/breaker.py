"""The circuit breaker on the cloud link: stop waiting on a cloud that does not answer.

    CLOSED ──(``failures`` consecutive failures)──► OPEN ──(``cooldown_s``)──► HALF_OPEN
      ▲                                               ▲                          │
      └──────────── a probe succeeds ─────────────────┼──── a probe fails ───────┘

Closed, every request goes. Open, none does: callers fail fast (or answer locally, or queue).
Half-open, at most ``half_open_probes`` requests go at once; the first success closes the
breaker, a failure opens it for another cool-down. A failure is a request the cloud did not
answer in time; an error answer is a success (the link works). Thread-safe.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker"]

logger = logging.getLogger(__name__)


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> int:
        """0 closed, 1 half-open, 2 open (the ``edge_agent_cloud_breaker_state`` gauge)."""
        return _GAUGE[self]


_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class CircuitBreaker:
    """Every :meth:`allow` that returns ``True`` must be followed by exactly one of
    :meth:`record_success`, :meth:`record_failure` or :meth:`release`."""

    def __init__(
        self,
        *,
        failures: int,
        cooldown_s: float,
        half_open_probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._max_probes = half_open_probes
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._tick()
            return self._state

    def allow(self) -> bool:
        """May a request go to the cloud now?"""
        with self._lock:
            self._tick()
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.HALF_OPEN and self._probes < self._max_probes:
                self._probes += 1
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._probes = max(0, self._probes - 1)
                self._move(BreakerState.CLOSED)
            if self._state is BreakerState.CLOSED:
                self._failures = 0

    def record_failure(self) -> None:
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._probes = max(0, self._probes - 1)
                self._open()
            elif self._state is BreakerState.CLOSED:
                self._failures += 1
                if self._failures >= self._threshold:
                    self._open()

    def reset(self) -> None:
        """Close now: the cloud is known to be back (a hub's retained status said online)."""
        with self._lock:
            self._failures = 0
            self._probes = 0
            self._move(BreakerState.CLOSED)

    def trip(self) -> None:
        """Open now: the cloud is known to be gone (every hub's Last Will said offline)."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                self._open()

    def release(self) -> None:
        """Give back a permit whose request was never sent (no outcome to record)."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._probes = max(0, self._probes - 1)

    # -- under the lock: ``on_change`` must not call back into the breaker -------------------

    def _tick(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown_s:
            self._probes = 0
            self._move(BreakerState.HALF_OPEN)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        if state is BreakerState.OPEN:
            logger.warning(
                "cloud circuit breaker open: requests fail fast for %g s", self._cooldown_s
            )
        else:
            logger.info("cloud circuit breaker %s", state.value.replace("_", "-"))
        if self._on_change is not None:
            self._on_change(state)
