"""The bridge's record of recent requests: identity by content, final answers only, bounds."""

from __future__ import annotations

import asyncio
import functools
import os
import tracemalloc
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from cloud_hub.answers import RecentAnswers, digest
from cloud_hub.errors import RequestTimeoutError


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def key(request_id: str, payload: bytes, device: str = "cam-01") -> tuple[str, str, bytes]:
    return (device, request_id, digest(payload))


@in_loop
async def test_the_same_id_with_other_content_is_another_request() -> None:
    record = RecentAnswers(max_bytes=1 << 20, ttl_s=60)
    first, entry = record.claim(key("r1", b"digit 3"))
    assert first
    record.settle(key("r1", b"digit 3"), entry, b"class 3", final=True)
    again, other = record.claim(key("r1", b"digit 7"))
    assert again, "a repeated id with other content must run, not get the first answer"
    record.settle(key("r1", b"digit 7"), other, b"class 7", final=True)
    seen, repeat = record.claim(key("r1", b"digit 3"))
    assert not seen
    assert repeat.answer == b"class 3"
    seen, repeat = record.claim(key("r1", b"digit 7"))
    assert not seen
    assert repeat.answer == b"class 7"
    # The same id and bytes from another device is that device's own request.
    assert record.claim(key("r1", b"digit 3", device="cam-02"))[0]


@in_loop
async def test_a_repeat_joins_the_run_in_progress() -> None:
    record = RecentAnswers(max_bytes=1 << 20, ttl_s=60)
    k = key("r1", b"x")
    _, entry = record.claim(k)
    seen, joined = record.claim(k)
    assert not seen
    assert joined is entry
    assert joined.running is not None
    waiter = asyncio.ensure_future(asyncio.shield(joined.running))
    record.settle(k, entry, b"answer", final=True)
    assert await waiter == b"answer"


@in_loop
async def test_transient_outcomes_are_given_to_joiners_but_not_kept() -> None:
    record = RecentAnswers(max_bytes=1 << 20, ttl_s=60)
    k = key("r1", b"x")
    _, entry = record.claim(k)
    _, joined = record.claim(k)
    assert joined.running is not None
    waiter = asyncio.ensure_future(asyncio.shield(joined.running))
    record.settle(k, entry, b'{"error": "queue full", "status": 503}', final=False)
    assert b"503" in await waiter
    assert len(record) == 0
    assert record.size_bytes == 0
    first, _ = record.claim(k)
    assert first, "a retry after a 503 must run again"


@in_loop
async def test_an_abandoned_run_fails_its_joiners_and_is_forgotten() -> None:
    record = RecentAnswers(max_bytes=1 << 20, ttl_s=60)
    k = key("r1", b"x")
    _, entry = record.claim(k)
    _, joined = record.claim(k)
    assert joined.running is not None
    waiter = asyncio.ensure_future(asyncio.shield(joined.running))
    record.abandon(k, entry, RequestTimeoutError("expired"))
    with pytest.raises(RequestTimeoutError):
        await waiter
    assert record.claim(k)[0]


@in_loop
async def test_bounded_in_bytes_oldest_first() -> None:
    evicted: list[str] = []
    record = RecentAnswers(max_bytes=100_000, ttl_s=60, on_evict=evicted.append)
    answer = bytes(4096)
    for i in range(200):
        k = key(f"r{i}", b"%d" % i)
        _, entry = record.claim(k)
        record.settle(k, entry, answer, final=True)
        assert record.size_bytes <= 100_000
    assert set(evicted) == {"bytes"}
    assert record.claim(key("r199", b"199"))[0] is False  # the newest is still there
    assert record.claim(key("r0", b"0"))[0] is True  # the oldest went first


@in_loop
async def test_entries_expire_on_the_monotonic_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("cloud_hub.answers.time.monotonic", lambda: now[0])
    evicted: list[str] = []
    record = RecentAnswers(max_bytes=1 << 20, ttl_s=10, on_evict=evicted.append)
    k = key("r1", b"x")
    _, entry = record.claim(k)
    record.settle(k, entry, b"answer", final=True)
    now[0] += 9.9
    assert record.claim(k)[0] is False
    now[0] += 0.2
    assert record.claim(k)[0] is True
    assert evicted == ["ttl"]


@in_loop
async def test_an_answer_evicted_while_running_still_reaches_its_joiners() -> None:
    record = RecentAnswers(max_bytes=1_000, ttl_s=60)
    k = key("big", b"x")
    _, entry = record.claim(k)
    _, joined = record.claim(k)
    assert joined.running is not None
    waiter = asyncio.ensure_future(asyncio.shield(joined.running))
    record.settle(k, entry, bytes(5_000), final=True)  # larger than the whole record
    assert len(await waiter) == 5_000
    assert len(record) == 0
    assert record.size_bytes == 0


@in_loop
async def test_accounted_size_covers_the_memory_entries_take() -> None:
    """The per-entry overhead the byte bound uses is not below what Python really spends."""
    record = RecentAnswers(max_bytes=1 << 40, ttl_s=600)
    count = 5_000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            k = (f"device-{i % 1000:04d}", f"request-{i:08d}", digest(os.urandom(8)))
            _, entry = record.claim(k)
            record.settle(k, entry, os.urandom(4096), final=True)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert record.size_bytes >= used, (record.size_bytes / count, used / count)
    assert record.size_bytes <= used * 1.1, (record.size_bytes / count, used / count)
