"""Per-device fairness at the MQTT bridge: a token bucket per device, and turns at the models.

:class:`DeviceBuckets` limits what one device may send (``rate_per_s`` sustained, ``burst`` at
once); a request over it is answered 429 with the seconds until the device may send again.

:class:`FairQueue` hands at most ``slots`` requests to the models at once. The others wait in one
queue per device, and a freed slot goes to the next device in turn (round-robin), so a device
with many requests waiting delays its own requests, not the others'. A device may have at most
``per_device`` requests waiting; past that it is refused, like a rate limit.

Both run on the event loop only; the clock is :func:`time.monotonic`.
"""

from __future__ import annotations

import asyncio
import collections
import time

from .auth import TokenBucket

__all__ = ["DeviceBuckets", "FairQueue"]


class DeviceBuckets:
    """One :class:`TokenBucket` per device; a bucket that has refilled is forgotten."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._refill_s = burst / rate_per_s
        self._next_sweep_s: float | None = None

    def take(self, device_id: str, now_s: float | None = None) -> float | None:
        """``None`` when the device may send this request, else the seconds until it may."""
        now_s = time.monotonic() if now_s is None else now_s
        if self._next_sweep_s is None:
            self._next_sweep_s = now_s + self._refill_s
        elif now_s >= self._next_sweep_s:
            self._sweep(now_s)
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = self._buckets[device_id] = TokenBucket(
                rate_per_s=self.rate_per_s, burst=self.burst, updated_s=now_s
            )
        return bucket.take(now_s)

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now_s: float) -> None:
        """Drop buckets that are full again: a new one starts full, so nothing changes."""
        self._next_sweep_s = now_s + self._refill_s
        refill_s = self._refill_s
        stale = [d for d, b in self._buckets.items() if now_s - b.updated_s >= refill_s]
        for device_id in stale:
            del self._buckets[device_id]


class FairQueue:
    def __init__(self, slots: int, per_device: int) -> None:
        self._free = slots
        self._per_device = per_device
        self._waiting: collections.OrderedDict[str, collections.deque[asyncio.Future[None]]] = (
            collections.OrderedDict()
        )
        self._count = 0

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot, all devices together."""
        return self._count

    def full_for(self, device_id: str) -> bool:
        """The device already has ``per_device`` requests waiting."""
        queue = self._waiting.get(device_id)
        return queue is not None and len(queue) >= self._per_device

    async def acquire(self, device_id: str, timeout_s: float | None = None) -> None:
        """Wait for a slot (raises :class:`TimeoutError` after ``timeout_s``); pair with
        :meth:`release`."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.get(device_id)
        if queue is None:
            queue = self._waiting[device_id] = collections.deque()
        queue.append(future)
        self._count += 1
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # granted as the wait ended: hand the slot on
            else:
                future.cancel()  # still queued: _grant skips it
            raise

    def release(self) -> None:
        """A request is done with its slot: the next device in turn gets it."""
        self._free += 1
        self._grant()

    def _grant(self) -> None:
        while self._free > 0 and self._waiting:
            device_id, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            self._count -= 1
            if queue:
                self._waiting.move_to_end(device_id)
            else:
                del self._waiting[device_id]
            if future.cancelled():
                continue
            self._free -= 1
            future.set_result(None)
