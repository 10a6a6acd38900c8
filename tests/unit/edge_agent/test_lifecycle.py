from __future__ import annotations

import threading
import time

from edge_agent.lifecycle import RequestGate


def test_drain_waits_for_requests_inside_and_shuts_the_door() -> None:
    gate = RequestGate()
    assert gate.enter()
    assert gate.in_flight == 1
    released = threading.Event()

    def finish_later() -> None:
        time.sleep(0.1)
        released.set()
        gate.exit()

    threading.Thread(target=finish_later).start()
    assert gate.drain(timeout_s=5)
    assert released.is_set()
    assert gate.draining
    assert not gate.enter()
    assert gate.in_flight == 0


def test_drain_gives_up_after_its_timeout() -> None:
    gate = RequestGate()
    assert gate.enter()
    started = time.monotonic()
    assert not gate.drain(timeout_s=0.05)
    assert time.monotonic() - started < 2
    assert gate.in_flight == 1
