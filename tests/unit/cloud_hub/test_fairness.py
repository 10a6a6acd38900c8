"""Per-device token buckets and the round-robin queue for a place at the models."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from cloud_hub.fairness import DeviceBuckets, FairQueue


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def test_each_device_has_its_own_bucket() -> None:
    buckets = DeviceBuckets(rate_per_s=10, burst=5)
    now = 100.0
    assert all(buckets.take("flood", now) is None for _ in range(5))
    wait_s = buckets.take("flood", now)
    assert wait_s == pytest.approx(0.1)
    assert buckets.take("quiet", now) is None
    assert buckets.take("flood", now + 0.11) is None


def test_refilled_buckets_are_forgotten() -> None:
    buckets = DeviceBuckets(rate_per_s=10, burst=5)
    now = 100.0
    for i in range(1000):
        buckets.take(f"d{i}", now)
    assert len(buckets) == 1000
    buckets.take("late", now + 10)
    assert len(buckets) == 1


@in_loop
async def test_a_device_with_a_long_queue_does_not_starve_the_others() -> None:
    fair = FairQueue(slots=1, per_device=100)
    order: list[str] = []

    async def request(device: str) -> None:
        await fair.acquire(device)
        order.append(device)
        await asyncio.sleep(0)
        fair.release()

    await fair.acquire("holder")  # the one slot is busy; everything below waits
    tasks = [asyncio.create_task(request("flood")) for _ in range(20)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(request(f"d{i}")) for i in range(3)]
    await asyncio.sleep(0)
    assert fair.waiting == 23
    fair.release()
    await asyncio.gather(*tasks)
    # Served in turn: the three quiet devices each within the first few places.
    assert order[:5] == ["flood", "d0", "d1", "d2", "flood"], order
    assert fair.waiting == 0


@in_loop
async def test_a_wait_past_its_deadline_gives_up_without_losing_a_place() -> None:
    fair = FairQueue(slots=1, per_device=10)
    await fair.acquire("a")
    with pytest.raises(TimeoutError):
        await fair.acquire("b", timeout_s=0.01)
    fair.release()
    await asyncio.wait_for(fair.acquire("c"), 1)  # the place went to c, not to b's ghost
    fair.release()
    await asyncio.wait_for(fair.acquire("d"), 1)


@in_loop
async def test_full_for_counts_a_device_s_waiting_requests() -> None:
    fair = FairQueue(slots=1, per_device=2)
    await fair.acquire("x")
    waits = [asyncio.create_task(fair.acquire("flood")) for _ in range(2)]
    await asyncio.sleep(0)
    assert fair.full_for("flood")
    assert not fair.full_for("other")
    for _ in range(3):
        fair.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waits)
