"""The dynamic batcher, with a small numpy backend whose calls are recorded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.backends.base import Backend, BackendOptions, TensorSpec
from cloud_hub.batcher import BatchObserver, DynamicBatcher
from cloud_hub.errors import InferenceError, QueueFullError, RequestTimeoutError, UnavailableError
from protocols import Datatype


class Doubler(Backend):
    """y = 2x, recording the batch sizes it ran; optionally slow or failing."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False, drop_batch: bool = False) -> None:
        super().__init__(
            name="doubler",
            inputs=[TensorSpec(name="x", datatype=Datatype.FP32, shape=(-1, 2))],
            outputs=[TensorSpec(name="y", datatype=Datatype.FP32, shape=(-1, 2))],
        )
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.fail = fail
        self.drop_batch = drop_batch
        self.threads: set[str] = set()

    @classmethod
    def model_file(cls) -> str:
        return "doubler.npy"

    @classmethod
    def load(cls, path: Path, options: BackendOptions) -> Backend:
        return cls()

    def infer(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        self.threads.add(threading.current_thread().name)
        self.calls.append(len(inputs["x"]))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        y = inputs["x"] * 2
        return {"y": y[:1] if self.drop_batch else y}

    def close(self) -> None:
        pass


class Recorder(BatchObserver):
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.rejections: list[str] = []

    def executed(
        self, *, batch_size: int, requests: int, queue_s: list[float], compute_s: float
    ) -> None:
        self.batches.append((batch_size, requests))

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def x(n: int, value: float) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.full((n, 2), value, np.float32)}


def test_concurrent_requests_form_one_batch_and_get_their_own_rows() -> None:
    async def main() -> None:
        backend = Doubler()
        batcher = DynamicBatcher(
            backend, max_batch_size=16, batching=True, max_queue_delay_us=50_000
        )
        results = await asyncio.gather(*(batcher.infer(x(1 + i % 2, i)) for i in range(8)))
        for i, result in enumerate(results):
            assert result["y"].shape == (1 + i % 2, 2)
            assert np.all(result["y"] == 2 * i)
        assert backend.calls == [12]
        await batcher.close()

    run(main())


def test_batches_never_exceed_max_batch_size() -> None:
    async def main() -> None:
        backend = Doubler()
        batcher = DynamicBatcher(
            backend, max_batch_size=4, batching=True, max_queue_delay_us=20_000
        )
        results = await asyncio.gather(*(batcher.infer(x(1, i)) for i in range(10)))
        assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(10)]
        assert max(backend.calls) <= 4
        assert sum(backend.calls) == 10
        await batcher.close()

    run(main())


def test_preferred_batch_size_dispatches_without_waiting_for_the_delay() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(
            Doubler(),
            max_batch_size=64,
            batching=True,
            max_queue_delay_us=5_000_000,
            preferred_batch_sizes=[4],
        )
        start = time.perf_counter()
        await asyncio.gather(*(batcher.infer(x(1, i)) for i in range(4)))
        assert time.perf_counter() - start < 1.0
        await batcher.close()

    run(main())


def test_a_lone_request_waits_at_most_the_delay() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(
            Doubler(), max_batch_size=64, batching=True, max_queue_delay_us=100_000
        )
        start = time.perf_counter()
        await batcher.infer(x(1, 1))
        elapsed = time.perf_counter() - start
        assert 0.09 <= elapsed < 1.0
        await batcher.close()

    run(main())


def test_requests_with_different_shapes_are_not_merged() -> None:
    async def main() -> None:
        backend = Doubler()
        batcher = DynamicBatcher(
            backend, max_batch_size=16, batching=True, max_queue_delay_us=20_000
        )
        wide = {"x": np.ones((1, 3), np.float32)}
        a, b, c = await asyncio.gather(
            batcher.infer(x(1, 1)), batcher.infer(wide), batcher.infer(x(1, 2))
        )
        assert a["y"].shape == (1, 2)
        assert b["y"].shape == (1, 3)
        assert c["y"][0, 0] == 4
        assert sorted(backend.calls) == [1, 2]
        await batcher.close()

    run(main())


def test_full_queue_refuses_at_once() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(
            Doubler(delay_s=0.2),
            max_batch_size=1,
            batching=False,
            max_queue_size=2,
            observer=recorder,
        )
        tasks = [asyncio.ensure_future(batcher.infer(x(1, i))) for i in range(6)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        refused = [r for r in results if isinstance(r, QueueFullError)]
        served = [r for r in results if isinstance(r, dict)]
        assert refused
        assert len(served) + len(refused) == 6
        assert "queue is full (2 requests waiting)" in refused[0].message
        assert "queue_full" in recorder.rejections
        await batcher.close()

    run(main())


def test_deadline_in_the_queue() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(
            Doubler(delay_s=0.3), max_batch_size=1, batching=False, observer=recorder
        )
        first = asyncio.ensure_future(batcher.infer(x(1, 1)))
        await asyncio.sleep(0.05)
        with pytest.raises(RequestTimeoutError, match="past its timeout"):
            await batcher.infer(x(1, 2), timeout_s=0.1)
        assert (await first)["y"][0, 0] == 2
        assert recorder.rejections == ["timeout"]
        await batcher.close()

    run(main())


def test_backend_failure_fails_the_whole_batch_and_the_batcher_survives() -> None:
    async def main() -> None:
        backend = Doubler(fail=True)
        batcher = DynamicBatcher(
            backend, max_batch_size=8, batching=True, max_queue_delay_us=10_000
        )
        results = await asyncio.gather(
            *(batcher.infer(x(1, i)) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, InferenceError) and "boom" in r.message for r in results)
        backend.fail = False
        assert (await batcher.infer(x(1, 5)))["y"][0, 0] == 10
        await batcher.close()

    run(main())


def test_output_without_the_batch_dimension_is_an_error() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(
            Doubler(drop_batch=True), max_batch_size=8, batching=True, max_queue_delay_us=10_000
        )
        results = await asyncio.gather(
            batcher.infer(x(1, 1)), batcher.infer(x(1, 2)), return_exceptions=True
        )
        assert all(
            isinstance(r, InferenceError) and "first dimension" in r.message for r in results
        )
        await batcher.close()

    run(main())


def test_close_drains_queued_requests_then_refuses() -> None:
    async def main() -> None:
        backend = Doubler(delay_s=0.05)
        batcher = DynamicBatcher(backend, max_batch_size=1, batching=False)
        tasks = [asyncio.ensure_future(batcher.infer(x(1, i))) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.close()
        assert [float((await t)["y"][0, 0]) for t in tasks] == [0.0, 2.0, 4.0, 6.0, 8.0]
        with pytest.raises(UnavailableError, match="being unloaded"):
            await batcher.infer(x(1, 1))

    run(main())


def test_cancelled_callers_are_skipped() -> None:
    async def main() -> None:
        backend = Doubler(delay_s=0.1)
        batcher = DynamicBatcher(backend, max_batch_size=1, batching=False)
        first = asyncio.ensure_future(batcher.infer(x(1, 1)))
        gone = asyncio.ensure_future(batcher.infer(x(1, 2)))
        await asyncio.sleep(0.02)
        gone.cancel()
        await first
        await batcher.close()
        assert backend.calls == [1]

    run(main())


def test_instances_run_batches_in_parallel_threads() -> None:
    async def main() -> None:
        backend = Doubler(delay_s=0.2)
        batcher = DynamicBatcher(backend, max_batch_size=1, batching=False, instance_count=3)
        start = time.perf_counter()
        await asyncio.gather(*(batcher.infer(x(1, i)) for i in range(3)))
        assert time.perf_counter() - start < 0.5
        assert len(backend.threads) == 3
        await batcher.close()

    run(main())


class Timings(BatchObserver):
    def __init__(self) -> None:
        self.queue_s: list[float] = []
        self.compute_s: list[float] = []

    def executed(
        self, *, batch_size: int, requests: int, queue_s: list[float], compute_s: float
    ) -> None:
        self.queue_s += queue_s
        self.compute_s.append(compute_s)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sub_millisecond_delays_and_timings_are_not_rounded_to_the_loops_clock(loop: str) -> None:
    """uvloop's clock and timers move in whole milliseconds: a 200 us delay must still be about
    200 us (not a wait for the clock's next tick), and the timings must not be 0 or 1 ms."""

    async def main() -> list[float]:
        timings = Timings()
        batcher = DynamicBatcher(
            Doubler(delay_s=0.0003),
            max_batch_size=8,
            batching=True,
            max_queue_delay_us=200,
            observer=timings,
        )
        waits = []
        for _ in range(41):
            start = time.perf_counter()
            await batcher.infer(x(1, 1))
            waits.append(time.perf_counter() - start)
        await batcher.close()
        quantised = [
            s for s in timings.queue_s + timings.compute_s if abs(s * 1e3 - round(s * 1e3)) < 1e-6
        ]
        assert not quantised, f"timings on whole milliseconds: {quantised}"
        assert all(q >= 0.0002 for q in timings.queue_s), min(timings.queue_s)
        return waits

    if loop == "uvloop":  # uvicorn's loop wherever it is installed, as with the hub's extras
        import uvloop

        waits = uvloop.run(main())
    else:
        waits = run(main())
    # Each call: the 200 us delay and 300 us of "inference"; a wait for the next millisecond
    # tick would add about half a millisecond to most of them.
    assert float(np.median(waits)) < 0.0009, sorted(waits)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_longer_rest_of_a_delay_waits_on_the_timer_not_the_cpu(loop: str) -> None:
    """A 900 us delay is not spent iterating the loop: that would take a core while it lasts."""

    async def main() -> tuple[float, float]:
        batcher = DynamicBatcher(Doubler(), max_batch_size=8, batching=True, max_queue_delay_us=900)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(40):
            await batcher.infer(x(1, 1))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await batcher.close()
        return wall, cpu

    if loop == "uvloop":
        import uvloop

        wall, cpu = uvloop.run(main())
    else:
        wall, cpu = run(main())
    assert wall >= 40 * 0.0009
    assert cpu < 0.5 * wall, f"{cpu * 1e3:.1f} ms of CPU in {wall * 1e3:.1f} ms"
