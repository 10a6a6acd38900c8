"""Dynamic batching: requests to one model version gather into batches that run together.

A batch is dispatched when it reaches ``max_batch_size`` or a preferred size, or when its first
request has waited ``max_queue_delay_us``. Only requests whose inputs agree on everything but the
batch dimension are merged; others wait for the next batch. The queue is bounded
(``max_queue_size``: a full queue refuses at once with :class:`QueueFullError`), requests may
carry a deadline for their time in the queue, and a request whose caller has gone is skipped.

Backends run in a thread pool of ``instance_count`` threads, so the event loop never blocks on
inference and at most that many batches run at once.

Times come from :func:`time.perf_counter`, not the loop's clock: uvloop's ``loop.time()`` moves
in whole milliseconds, which turned a 100 us delay into a busy wait for the next tick (up to a
millisecond a batch) and rounded queue and compute times to 0 or 1 ms. Event-loop timers are no
finer either (uvloop rounds to the millisecond, asyncio's selector waits round up), so a delay's
last fraction of a millisecond, when it is short (``_SPIN_LIMIT_S``), passes one loop iteration at
a time, each reading what has arrived; a longer one waits for the next timer tick instead, since
iterating that long takes a core's worth of CPU for it (with a 500 us delay spent so, the other
devices' p99 under a rate-limited flood, tests/integration/test_hub_mqtt_fleet.py, more than
doubled in three runs of five; in none of two with the timer).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends.base import Backend
from .errors import HubError, InferenceError, QueueFullError, RequestTimeoutError, UnavailableError

__all__ = ["BatchObserver", "DynamicBatcher"]

logger = logging.getLogger(__name__)

_clock = time.perf_counter
_TIMER_RESOLUTION_S = 0.001
"""The finest wait an event-loop timer keeps to (uvloop counts whole milliseconds)."""
_SPIN_LIMIT_S = 0.00025
"""The longest rest of a delay passed iterating the loop rather than on a timer tick, which would
overshoot it at least fourfold."""

Arrays = dict[str, np.ndarray[Any, Any]]


class BatchObserver:
    """Hooks the batcher calls with its timings; the hub's metrics and stats subclass it."""

    def queue_depth(self, depth: int) -> None:
        """The number of requests waiting."""

    def executed(
        self, *, batch_size: int, requests: int, queue_s: list[float], compute_s: float
    ) -> None:
        """A batch ran: its size in items and requests, each request's time queued, the run time."""

    def rejected(self, reason: str) -> None:
        """A request was refused or dropped before it ran (``queue_full``, ``timeout``)."""


@dataclass(eq=False)
class _Pending:
    inputs: Mapping[str, np.ndarray[Any, Any]]
    size: int
    signature: tuple[Any, ...]
    future: asyncio.Future[Arrays]
    enqueued_s: float
    deadline_s: float | None
    queued_s: float = field(default=0.0)


class DynamicBatcher:
    """Serves one loaded model version. Create it inside the running event loop."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch_size: int,
        batching: bool,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: list[int] | None = None,
        max_queue_size: int = 1024,
        default_timeout_us: int = 0,
        instance_count: int = 1,
        observer: BatchObserver | None = None,
        name: str = "model",
    ) -> None:
        self._backend = backend
        self._max_batch = max_batch_size
        self._batching = batching and max_batch_size > 0
        self._delay_s = max_queue_delay_us / 1e6
        self._preferred = set(preferred_batch_sizes or ())
        self._max_queue = max_queue_size
        self._default_timeout_s = default_timeout_us / 1e6 or None
        self._observer = observer or BatchObserver()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(
            max_workers=instance_count, thread_name_prefix=f"infer-{name}"
        )
        self._workers = [
            asyncio.create_task(self._work(), name=f"batcher-{name}-{i}")
            for i in range(instance_count)
        ]
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def infer(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], *, timeout_s: float | None = None
    ) -> Arrays:
        """Queue one request and wait for its outputs."""
        if self._closing:
            raise UnavailableError("the model is being unloaded")
        if len(self._queue) >= self._max_queue:
            self._observer.rejected("queue_full")
            raise QueueFullError(
                f"the model's queue is full ({self._max_queue} requests waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        now = _clock()
        timeout_s = timeout_s if timeout_s is not None else self._default_timeout_s
        size = _batch_size(inputs) if self._max_batch else 1
        pending = _Pending(
            inputs=inputs,
            size=size,
            signature=_signature(inputs) if self._batching else (),
            future=loop.create_future(),
            enqueued_s=now,
            deadline_s=now + timeout_s if timeout_s else None,
        )
        self._queue.append(pending)
        self._idle.clear()
        self._observer.queue_depth(len(self._queue))
        self._wakeup.set()
        return await pending.future

    async def close(self, *, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, let queued and running ones finish, then stop the workers."""
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        except asyncio.TimeoutError:
            logger.warning(
                "%d requests still queued after %.1fs; failing them",
                len(self._queue),
                drain_timeout_s,
            )
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(
                    UnavailableError("the model was unloaded before the request ran")
                )
        self._executor.shutdown(wait=True)

    # -- worker side ---------------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            self._running += 1
            try:
                await self._execute(loop, batch)
            finally:
                self._running -= 1
                self._check_idle()

    def _check_idle(self) -> None:
        if not self._queue and self._running == 0:
            self._idle.set()

    def _take_first(self) -> _Pending | None:
        now = _clock()
        while self._queue:
            item = self._queue.popleft()
            if self._usable(item, now):
                return item
        return None

    def _usable(self, item: _Pending, now: float) -> bool:
        if item.future.done():  # the caller went away
            return False
        if item.deadline_s is not None and now > item.deadline_s:
            self._observer.rejected("timeout")
            item.future.set_exception(
                RequestTimeoutError(
                    f"the request waited {now - item.enqueued_s:.3f}s in the queue, past its timeout"
                )
            )
            return False
        return True

    async def _gather(self) -> list[_Pending]:
        while not self._queue:
            self._check_idle()
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._take_first()
        if first is None:
            self._observer.queue_depth(len(self._queue))
            return []
        batch = [first]
        if not self._batching:
            self._observer.queue_depth(len(self._queue))
            return batch
        total = first.size
        dispatch_at = first.enqueued_s + self._delay_s
        while True:
            total = self._pull_compatible(batch, total, _clock())
            if total >= self._max_batch or total in self._preferred or self._closing:
                break
            remaining = dispatch_at - _clock()
            if remaining <= 0:
                break
            self._wakeup.clear()
            if remaining >= _TIMER_RESOLUTION_S:
                # Whole timer ticks only, so the wait never overshoots the delay.
                whole = math.floor(remaining / _TIMER_RESOLUTION_S) * _TIMER_RESOLUTION_S
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), whole)
            elif remaining <= _SPIN_LIMIT_S:
                await asyncio.sleep(0)
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
        self._observer.queue_depth(len(self._queue))
        return batch

    def _pull_compatible(self, batch: list[_Pending], total: int, now: float) -> int:
        """Move queued requests that fit into ``batch``, oldest first; the rest keep their place."""
        signature = batch[0].signature
        kept: collections.deque[_Pending] = collections.deque()
        while self._queue:
            item = self._queue.popleft()
            if not self._usable(item, now):
                continue
            if item.signature == signature and total + item.size <= self._max_batch:
                batch.append(item)
                total += item.size
            else:
                kept.append(item)
        kept.extend(self._queue)
        self._queue = kept
        return total

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        start = _clock()
        for item in batch:
            item.queued_s = start - item.enqueued_s
        if len(batch) == 1:
            merged = dict(batch[0].inputs)
        else:
            merged = {
                name: np.concatenate([item.inputs[name] for item in batch])
                for name in batch[0].inputs
            }
        try:
            outputs = await loop.run_in_executor(self._executor, self._backend.infer, merged)
            results = (
                _split(outputs, [item.size for item in batch]) if len(batch) > 1 else [outputs]
            )
        except HubError as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:
            logger.exception("backend failed on a batch of %d requests", len(batch))
            self._fail(batch, InferenceError(f"inference failed: {exc}"))
            return
        compute_s = _clock() - start
        self._observer.executed(
            batch_size=sum(item.size for item in batch),
            requests=len(batch),
            queue_s=[item.queued_s for item in batch],
            compute_s=compute_s,
        )
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    @staticmethod
    def _fail(batch: list[_Pending], exc: HubError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)


def _batch_size(inputs: Mapping[str, np.ndarray[Any, Any]]) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _signature(inputs: Mapping[str, np.ndarray[Any, Any]]) -> tuple[Any, ...]:
    return tuple((name, value.dtype.str, value.shape[1:]) for name, value in inputs.items())


def _split(outputs: Arrays, sizes: list[int]) -> list[Arrays]:
    total = sum(sizes)
    bounds = np.cumsum(sizes)[:-1]
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise InferenceError(
                f"output {name!r} has shape {list(value.shape)}; a batched model must return "
                f"the batch of {total} as its first dimension"
            )
    parts: dict[str, list[np.ndarray[Any, Any]]] = {
        n: np.split(v, bounds) for n, v in outputs.items()
    }
    return [{name: parts[name][i] for name in outputs} for i in range(len(sizes))]
