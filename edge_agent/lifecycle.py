"""The request gate: counts in-flight requests and closes the door on a stop.

On SIGTERM the agent closes the gate (new requests get 503), waits until the requests already
inside finish, and only then stops the servers, so no accepted request is cut off.
"""

from __future__ import annotations

import threading

__all__ = ["RequestGate"]


class RequestGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> bool:
        """Count a request in; ``False`` (and nothing counted) once draining."""
        with self._cond:
            if self._draining:
                return False
            self._in_flight += 1
            return True

    def exit(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._cond.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Close the gate and wait for in-flight requests; ``False`` if some outlived the timeout."""
        with self._cond:
            self._draining = True
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)
